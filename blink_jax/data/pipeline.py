"""Training input: which mentions form each global batch, and their tensors.

The global batch of step s is a pure function of (seed, s): epoch
e = s // steps_per_epoch takes a fresh permutation of the training mentions
seeded by (seed, e), and step s takes its next `global_batch` rows. Hence
  * the data position in a checkpoint is just the step: resuming is exact;
  * the global batch does not depend on the number of processes: process p
    of P takes block p of it, so a 2-host run sees the same batches as 1 host;
  * each process reads and tokenizes only its own rows: records come from a
    random-access `records.Records` (a jsonl byte-offset index or a tfds
    array_record data source), and only labels and worlds are held in memory.
"""

from __future__ import annotations

import dataclasses
import jax
import numpy as np

from blink_jax import tokenization
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records


@dataclasses.dataclass(frozen=True)
class StepSampler:
  """Deterministic global batches; drops each epoch's incomplete last batch."""

  num_examples: int
  global_batch: int
  seed: int = 0

  def __post_init__(self):
    if self.num_examples < self.global_batch:
      raise ValueError(f"{self.num_examples} training examples are fewer than "
                       f"one global batch of {self.global_batch}.")

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch

  def epoch(self, step: int) -> int:
    return step // self.steps_per_epoch

  def global_indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
    return perm[i * self.global_batch:(i + 1) * self.global_batch]

  def local_indices(self, step: int, rows: slice) -> np.ndarray:
    """This process's rows of step's global batch (`sharding.process_rows`)."""
    return self.global_indices(step)[rows]


class Inputs:
  """Tokenizes rows of a mention set and of the catalogue, in BLINK's layouts."""

  def __init__(self, tok: tokenization.Tokenizer, entities: Records[Entity],
               mentions: Records[Mention], *, max_context_len: int,
               max_entity_len: int):
    self.tok = tok
    self.entities = entities
    self.mentions = mentions
    self.max_context_len = max_context_len
    self.max_entity_len = max_entity_len
    self.entity_ids = entities.labels

  def contexts(self, rows: np.ndarray) -> tokenization.MentionBatch:
    ms = self.mentions.take(rows)
    return self.tok.encode_mentions([m.context_left for m in ms],
                                    [m.mention for m in ms],
                                    [m.context_right for m in ms],
                                    self.max_context_len)

  def entity_batch(self, entity_rows: np.ndarray) -> tokenization.TokenBatch:
    es = self.entities.take(entity_rows)
    return self.tok.encode_entities([e.title for e in es], [e.text for e in es],
                                    self.max_entity_len)


class BatchBuilder(Inputs):
  """Tokenizes mentions, their gold entities and hard negatives into a batch."""

  def __init__(self, tok: tokenization.Tokenizer, entities: Records[Entity],
               mentions: Records[Mention], *, max_context_len: int,
               max_entity_len: int):
    super().__init__(tok, entities, mentions, max_context_len=max_context_len,
                     max_entity_len=max_entity_len)
    self.gold_rows = entities.positions_of(mentions.labels)
    missing = mentions.labels[self.gold_rows < 0]
    if len(missing):
      raise ValueError(f"{len(missing)} training mentions have gold ids not in "
                       f"the catalogue, e.g. {missing[:5].tolist()}.")

  def __call__(self, rows: np.ndarray, hard_rows: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """The batch of mentions `rows` with hard negatives `hard_rows` [b, H].

    hard_rows holds catalogue rows, -1 where a mention has fewer negatives.
    Entities come out as [b, 1 + H, Le]: the gold first, then the negatives.
    """
    rows = np.asarray(rows)
    b = len(rows)
    hard = (np.zeros((b, 0), np.int64) if hard_rows is None
            else np.asarray(hard_rows, np.int64))
    ent_rows = np.concatenate([self.gold_rows[rows][:, None], hard], axis=1)
    valid = ent_rows >= 0
    ctx = self.contexts(rows)
    ents = self.entity_batch(np.where(valid, ent_rows, 0).reshape(-1))
    shape = (b, ent_rows.shape[1], self.max_entity_len)
    # Missing negatives are filled with entity row 0's tokens (never an
    # all-padding row, which attention cannot normalise) and labelled -1, which
    # the loss masks out.
    return {
        "context_ids": ctx.ids,
        "context_mask": ctx.mask,
        "entity_ids": ents.ids.reshape(shape),
        "entity_mask": ents.mask.reshape(shape),
        "entity_labels": np.where(valid, self.entity_ids[np.maximum(ent_rows, 0)], -1),
        "labels": self.entity_ids[self.gold_rows[rows]],
    }


class PairBuilder(Inputs):
  """Mention-candidate pairs for the cross-encoder, addressed by flat pair row.

  B mentions with K candidates each are B * K pair rows: row r pairs mention
  r // K with its candidate r % K. Devices split these rows, so the K
  candidates of one mention may sit on several devices (and hosts); each
  process tokenizes only its own rows.
  """

  def __init__(self, tok: tokenization.Tokenizer, entities: Records[Entity],
               mentions: Records[Mention], candidate_ids: np.ndarray, *,
               max_context_len: int, max_entity_len: int):
    super().__init__(tok, entities, mentions, max_context_len=max_context_len,
                     max_entity_len=max_entity_len)
    self.candidate_ids = np.asarray(candidate_ids)   # [N, K] entity ids, -1 = none
    self.k = self.candidate_ids.shape[1]
    self.candidate_rows = entities.positions_of(self.candidate_ids.reshape(-1)).reshape(
        self.candidate_ids.shape)
    unknown = (self.candidate_ids >= 0) & (self.candidate_rows < 0)
    if unknown.any():
      raise ValueError(f"{int(unknown.sum())} candidates are not in the catalogue, e.g. "
                       f"{self.candidate_ids[unknown][:5].tolist()}.")

  def pairs(self, mention_rows: np.ndarray, cols: np.ndarray
            ) -> tuple[tokenization.TokenBatch, np.ndarray, np.ndarray]:
    """Pair inputs [n, T] of mention_rows[i] with its candidate cols[i],
    with `gold` [n] (1.0 where that candidate is the mention's entity) and
    `valid` [n] (false where the candidate list is padding)."""
    uniq, inverse = np.unique(mention_rows, return_inverse=True)
    ctx = self.contexts(uniq)
    ent_rows = self.candidate_rows[mention_rows, cols]
    valid = ent_rows >= 0
    # Padding candidates take entity row 0's tokens (never an empty row,
    # which attention cannot normalise); `valid` masks them out of the loss.
    ents = self.entity_batch(np.where(valid, ent_rows, 0))
    ctx = tokenization.TokenBatch(ids=ctx.ids[inverse], mask=ctx.mask[inverse],
                                  segment_ids=ctx.segment_ids[inverse],
                                  offsets=ctx.offsets[inverse])
    one = lambda x: x[:, None]  # One candidate per pair row.
    pair = tokenization.pair_inputs(ctx, tokenization.TokenBatch(
        ids=one(ents.ids), mask=one(ents.mask), segment_ids=one(ents.segment_ids),
        offsets=one(ents.offsets)))
    pair = tokenization.TokenBatch(ids=pair.ids[:, 0], mask=pair.mask[:, 0],
                                   segment_ids=pair.segment_ids[:, 0],
                                   offsets=pair.offsets[:, 0])
    gold = (self.candidate_ids[mention_rows, cols] == self.mentions.labels[mention_rows]) & valid
    return pair, gold.astype(np.float32), valid

  def __call__(self, mention_rows: np.ndarray, rows: slice) -> dict[str, np.ndarray]:
    """This process's `rows` of the B * K pair rows of mentions `mention_rows` [B]."""
    flat = np.arange(len(mention_rows) * self.k)[rows]
    pair, gold, valid = self.pairs(np.asarray(mention_rows)[flat // self.k], flat % self.k)
    return {"ids": pair.ids, "mask": pair.mask, "segment_ids": pair.segment_ids,
            "gold": gold, "valid": valid}
