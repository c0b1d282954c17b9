"""The one tokenization layer of blink_jax, with BLINK's input layouts.

Every model reads its inputs from here:
  * mentions (context tower, mention detection, linker):
      [CLS] left [unused0] mention [unused1] right [SEP] [PAD]...
  * entities (entity tower):
      [CLS] title [unused2] description [SEP] [PAD]...
  * mention-entity pairs (cross-encoder): see `pair_inputs`.

Word pieces come from a Hugging Face fast tokenizer (Rust, batched), built
from the checkpoint's own `tokenizer.json` when there is one, so lowercasing
and accent stripping are whatever the checkpoint was trained with; a bare
`vocab.txt` falls back to BERT's WordPiece with `do_lower_case` from
`tokenizer_config.json`.

Every token keeps its character span in the text it came from (`offsets`,
-1 for special and padding tokens) so that the linker can map predicted token
spans back to characters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import numpy as np
import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

# BLINK's marker tokens: reserved, untrained ids of every BERT vocabulary.
MENTION_START = "[unused0]"
MENTION_END = "[unused1]"
TITLE_SEP = "[unused2]"


@dataclasses.dataclass(frozen=True)
class TokenBatch:
  """A padded batch of token ids with its masks and character offsets.

  ids: [N, L] int32 token ids, [PAD] (0) after the last real token.
  mask: [N, L] int32, 1 on real tokens.
  segment_ids: [N, L] int32 token type ids.
  offsets: [N, L, 2] int32 (start, end) character span of each token in its
    source text; (-1, -1) on special and padding tokens.
  """

  ids: np.ndarray
  mask: np.ndarray
  segment_ids: np.ndarray
  offsets: np.ndarray

  def __len__(self) -> int:
    return self.ids.shape[0]

  def take(self, rows: np.ndarray) -> "TokenBatch":
    """The batch of rows `rows` (every field, same class)."""
    return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows]
                                        for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class MentionBatch(TokenBatch):
  """Mention inputs; offsets index into `left + mention + right`.

  mention_bounds: [N, 2] int32 token positions of [unused0] and [unused1].
  """

  mention_bounds: np.ndarray = None


class Tokenizer:
  """Turns text into BLINK's padded model inputs, in batches."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *,
               cls_token: str = "[CLS]", sep_token: str = "[SEP]",
               pad_token: str = "[PAD]"):
    self._tok = tokenizer
    # Our layouts add specials and pad themselves; a tokenizer.json often
    # carries its own padding/truncation settings, which would corrupt them.
    self._tok.no_padding()
    self._tok.no_truncation()
    ids = {}
    for name in (cls_token, sep_token, pad_token, MENTION_START, MENTION_END,
                 TITLE_SEP):
      i = self._tok.token_to_id(name)
      if i is None:
        raise ValueError(f"The vocabulary has no {name} token; BLINK's input "
                         "layouts need it.")
      ids[name] = i
    self.cls_id = ids[cls_token]
    self.sep_id = ids[sep_token]
    self.pad_id = ids[pad_token]
    self.mention_start_id = ids[MENTION_START]
    self.mention_end_id = ids[MENTION_END]
    self.title_sep_id = ids[TITLE_SEP]
    if self.pad_id != 0:
      # Models default their attention mask to ids != 0.
      raise ValueError(f"{pad_token} must have id 0, has {self.pad_id}.")

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike) -> "Tokenizer":
    """Loads the tokenizer of a checkpoint directory."""
    directory = os.fspath(directory)
    tok_json = os.path.join(directory, "tokenizer.json")
    vocab = os.path.join(directory, "vocab.txt")
    if os.path.exists(tok_json):
      return cls(tokenizers.Tokenizer.from_file(tok_json))
    if os.path.exists(vocab):
      lower = True
      cfg_path = os.path.join(directory, "tokenizer_config.json")
      if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
          lower = json.load(f).get("do_lower_case", True)
      wp = BertWordPieceTokenizer(vocab, lowercase=lower)
      return cls(wp._tokenizer)  # pylint: disable=protected-access
    raise FileNotFoundError(f"{directory} has neither tokenizer.json nor vocab.txt.")

  # ---------------------------------------------------------------- pieces
  def pieces(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Word-piece ids and character offsets of each text, no specials."""
    encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [(e.ids, e.offsets) for e in encs]

  def tokens(self, text: str) -> list[str]:
    """Word pieces of one text, for inspection and tests."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  @functools.cached_property
  def continuation(self) -> np.ndarray:
    """[vocab] True for "##" pieces, which continue a word rather than start one."""
    table = np.zeros(self.vocab_size, bool)
    for piece, i in self._tok.get_vocab(with_added_tokens=True).items():
      table[i] = piece.startswith("##")
    return table

  def pack(self, rows, max_len: int, segments=None) -> TokenBatch:
    """Pads (ids, offsets) rows that already carry their specials into a batch."""
    n = len(rows)
    ids = np.full((n, max_len), self.pad_id, np.int32)
    offsets = np.full((n, max_len, 2), -1, np.int32)
    seg = np.zeros((n, max_len), np.int32)
    for i, (row_ids, row_offsets) in enumerate(rows):
      ids[i, :len(row_ids)] = row_ids
      offsets[i, :len(row_offsets)] = row_offsets
    mask = (np.arange(max_len)[None, :] < np.array(
        [len(r[0]) for r in rows], np.int32)[:, None]).astype(np.int32)
    if segments is not None:
      seg[:] = segments
    return TokenBatch(ids=ids, mask=mask, segment_ids=seg, offsets=offsets)

  # -------------------------------------------------------------- mentions
  def encode_mentions(self, left: Sequence[str], mention: Sequence[str],
                      right: Sequence[str], max_len: int) -> MentionBatch:
    """BLINK's mention-in-context layout, with its balanced quotas.

    The mention with its markers is kept whole; the left side gets
    (max_len - |markers+mention|) // 2 - 1 tokens and the right side the rest,
    and whatever one side does not use flows to the other. A mention longer
    than the budget is truncated (BLINK asserts there) so that one bad record
    cannot stop a run. Offsets index into `left + mention + right`.
    """
    if not len(left) == len(mention) == len(right):
      raise ValueError("left, mention and right must have the same length.")
    if max_len < 4:
      raise ValueError(f"max_len={max_len} leaves no room for a mention.")
    n = len(mention)
    all_pieces = self.pieces(list(left) + list(mention) + list(right))
    rows, bounds = [], np.zeros((n, 2), np.int32)
    none = (-1, -1)
    for i in range(n):
      l_ids, l_off = all_pieces[i]
      m_ids, m_off = all_pieces[n + i]
      r_ids, r_off = all_pieces[2 * n + i]
      m_shift, r_shift = len(left[i]), len(left[i]) + len(mention[i])
      m_ids, m_off = m_ids[:max_len - 4], m_off[:max_len - 4]
      m_len = len(m_ids) + 2
      left_quota = (max_len - m_len) // 2 - 1
      right_quota = max_len - m_len - left_quota - 2
      if len(l_ids) <= left_quota:
        right_quota += left_quota - len(l_ids)
      elif len(r_ids) <= right_quota:
        left_quota += right_quota - len(r_ids)
      # Explicit start index: BLINK's `left[-quota:]` keeps everything at 0.
      l_start = max(len(l_ids) - max(left_quota, 0), 0)
      l_ids, l_off = l_ids[l_start:], l_off[l_start:]
      r_ids, r_off = r_ids[:max(right_quota, 0)], r_off[:max(right_quota, 0)]
      row_ids = ([self.cls_id] + l_ids + [self.mention_start_id] + m_ids
                 + [self.mention_end_id] + r_ids + [self.sep_id])
      row_off = ([none] + list(l_off) + [none]
                 + [(s + m_shift, e + m_shift) for s, e in m_off] + [none]
                 + [(s + r_shift, e + r_shift) for s, e in r_off] + [none])
      bounds[i] = (1 + len(l_ids), 2 + len(l_ids) + len(m_ids))
      rows.append((row_ids, row_off))
    b = self.pack(rows, max_len)
    return MentionBatch(**dataclasses.asdict(b), mention_bounds=bounds)

  def mentions(self, records: Sequence[Any], max_len: int) -> MentionBatch:
    """`encode_mentions` of records with context_left / mention / context_right."""
    return self.encode_mentions([m.context_left for m in records],
                                [m.mention for m in records],
                                [m.context_right for m in records], max_len)

  # -------------------------------------------------------------- entities
  def entities(self, records: Sequence[Any], max_len: int) -> TokenBatch:
    """`encode_entities` of records with a title and a text (description)."""
    return self.encode_entities([e.title for e in records], [e.text for e in records],
                                max_len)

  def encode_entities(self, titles: Sequence[str], descriptions: Sequence[str],
                      max_len: int) -> TokenBatch:
    """BLINK's entity layout: [CLS] title [unused2] description [SEP].

    Truncated to max_len from the end of the description. Offsets of title
    tokens index into the title, those of description tokens into the
    description.
    """
    if len(titles) != len(descriptions):
      raise ValueError("titles and descriptions must have the same length.")
    if max_len < 3:
      raise ValueError(f"max_len={max_len} is too short for an entity.")
    n = len(titles)
    all_pieces = self.pieces(list(titles) + list(descriptions))
    rows = []
    for i in range(n):
      t_ids, t_off = all_pieces[i]
      d_ids, d_off = all_pieces[n + i]
      body = (t_ids + [self.title_sep_id] + d_ids)[:max_len - 2]
      body_off = (list(t_off) + [(-1, -1)] + list(d_off))[:max_len - 2]
      rows.append(([self.cls_id] + body + [self.sep_id],
                   [(-1, -1)] + body_off + [(-1, -1)]))
    return self.pack(rows, max_len)

  # ----------------------------------------------------------------- texts
  def encode_texts(self, texts: Sequence[str], max_len: int) -> TokenBatch:
    """Plain [CLS] text [SEP], truncated; offsets index into each text."""
    rows = []
    for ids, off in self.pieces(texts):
      rows.append(([self.cls_id] + ids[:max_len - 2] + [self.sep_id],
                   [(-1, -1)] + list(off[:max_len - 2]) + [(-1, -1)]))
    return self.pack(rows, max_len)


def pair_inputs(context: TokenBatch, entities: TokenBatch) -> TokenBatch:
  """Cross-encoder inputs: each context followed by each of its candidates.

  context: [N, Lc] mention inputs; entities: [N, K, Le] candidate inputs.
  Returns [N, K, Lc + Le - 1]: the context's real tokens (ending in [SEP]),
  then the entity's tokens without its [CLS] on segment 1, then padding.

  BLINK instead appends the entity after the context's *padding*, so entity
  tokens always sit at position Lc. We pack instead: the pair then has BERT's
  pre-training layout (contiguous positions, [SEP]-separated segments), and
  the total length (hence compute) is the same. BLINK's released cross-encoder
  weights, which learned the padded layout, are not a target of this project.
  Offsets of the pair refer to the context text on segment 0 and to the
  entity's title/description on segment 1.
  """
  n, lc = context.ids.shape
  if entities.ids.ndim != 3 or entities.ids.shape[0] != n:
    raise ValueError(f"entities must be [N={n}, K, Le], got {entities.ids.shape}.")
  _, k, le = entities.ids.shape
  length = lc + le - 1
  c_len = context.mask.sum(-1).astype(np.int64)           # [N]
  e_len = entities.mask.sum(-1).astype(np.int64) - 1      # [N, K] minus [CLS]
  pos = np.arange(length)[None, None, :]                  # [1, 1, T]
  in_ctx = pos < c_len[:, None, None]
  e_pos = pos - c_len[:, None, None] + 1                  # index into entity
  in_ent = ~in_ctx & (e_pos < (e_len + 1)[..., None])
  c_idx = np.minimum(pos, lc - 1)
  e_idx = np.clip(e_pos, 0, le - 1)
  ctx_ids = np.broadcast_to(context.ids[:, None, :], (n, k, lc))
  ctx_off = np.broadcast_to(context.offsets[:, None], (n, k, lc, 2))
  gather = lambda a, i: np.take_along_axis(a, np.broadcast_to(i, (n, k, length)), 2)
  ids = np.where(in_ctx, gather(ctx_ids, c_idx),
                 np.where(in_ent, gather(entities.ids, e_idx), 0))
  off_c = np.stack([gather(ctx_off[..., j], c_idx) for j in range(2)], -1)
  off_e = np.stack([gather(entities.offsets[..., j], e_idx) for j in range(2)], -1)
  offsets = np.where(in_ctx[..., None], off_c, np.where(in_ent[..., None], off_e, -1))
  return TokenBatch(
      ids=ids.astype(np.int32),
      mask=(in_ctx | in_ent).astype(np.int32),
      segment_ids=in_ent.astype(np.int32),
      offsets=offsets.astype(np.int32))
