"""Retrieval evaluation: encode a catalogue and mentions, rank, report recall@k.

Zeshel ranks each mention only against the entities of its own world; other
data (one knowledge base) is a single group. Dense ranking goes through the
entity index (index.py, exact back end, sharded over the mesh).
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from blink_jax import bm25
from blink_jax import index as index_lib
from blink_jax import metrics
from blink_jax import progress
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records

EmbedFn = Callable[[np.ndarray, np.ndarray], jax.Array]
ALL = "all"  # The group name of data without worlds.


def tower_fn(tower: nnx.Module, mesh: Mesh) -> Callable[..., jax.Array]:
  """A jitted `(*inputs) -> outputs` of a module in eval mode (an encoder
  tower: (ids, mask) -> embeddings; the cross-encoder: (ids, mask, segment_ids)
  -> scores).

  Inputs are global arrays split over the mesh's devices (and hosts); the
  output is replicated so that every process can read all of it.
  """
  tower.eval()
  graphdef, state = nnx.split(tower)

  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def embed(state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)

  return lambda *inputs: embed(state, *inputs)


def encode(tower: nnx.Module, tokenize: Callable[[np.ndarray], tokenization.TokenBatch],
           n: int, *, batch_size: int, mesh: Mesh | None = None,
           desc: str = "encoding", inputs: Sequence[str] = ("ids", "mask")) -> np.ndarray:
  """Runs `tower` over rows 0..n-1, `batch_size` rows per call, with a progress bar.

  `tower` is an nnx.Module or a function made by `tower_fn`.

  `tokenize(rows)` reads and tokenizes those rows; the fields named in
  `inputs` are passed to the tower. Each call's rows are split over the
  processes, and each process tokenizes only its own block, so a catalogue is
  read once in all, in a stream. batch_size is rounded up to a multiple of
  the device count; a last (or only) call with fewer rows is padded to the
  next power of two times the device count, not to batch_size, so a small
  call (one text through the linker) costs little and the function compiles
  for at most log2(batch_size) shapes.
  """
  mesh = mesh or sharding.make_mesh()
  # A function from tower_fn is compiled already: callers that encode in
  # many calls (the linker) pass one to avoid compiling each time.
  embed = tower_fn(tower, mesh) if isinstance(tower, nnx.Module) else tower
  batch_size = -(-batch_size // mesh.size) * mesh.size
  chunks = []
  for start in progress.bar(range(0, n, batch_size), desc=desc, unit="batch"):
    size = min(batch_size, mesh.size * _next_pow2(-(-(n - start) // mesh.size)))
    mine = sharding.process_rows(mesh, size)
    per = mine.stop - mine.start
    first = start + mine.start
    rows = np.arange(first, min(first + per, n))
    # A process past the end still tokenizes one row, for the common width.
    local = tokenize(rows if len(rows) else np.zeros(1, np.int64))
    arrays = {}
    for name in inputs:
      x = getattr(local, name)
      arrays[name] = np.zeros((per,) + x.shape[1:], x.dtype)
      arrays[name][:len(rows)] = x[:len(rows)]
    # Padding rows hold one [CLS]-like token so no row is fully masked.
    arrays["mask"][len(rows):, 0] = 1
    batch = sharding.global_batch(arrays, mesh)
    out = embed(*(batch[name] for name in inputs))
    chunks.append(np.asarray(out)[:min(size, n - start)])
  return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _next_pow2(x: int) -> int:
  return 1 << max(x - 1, 0).bit_length()


def _groups(worlds: np.ndarray) -> dict[str, np.ndarray]:
  """Row indices per world; records without a world form the group ALL."""
  rows = collections.defaultdict(list)
  for i, w in enumerate(worlds):
    rows[w if w is not None else ALL].append(i)
  return {w: np.asarray(r, np.int64) for w, r in sorted(rows.items())}


def rank_per_world(rank: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
                   entities: Records[Entity], mentions: Records[Mention],
                   k: int) -> np.ndarray:
  """Ranks each mention against its own world's entities; returns entity ids.

  `rank(query_rows, entity_rows, k)` returns, per query row, positions into
  entity_rows, best first. Worlds are those of the records (None = one KB).
  Rows are padded with -1 where a world has fewer than k entities.
  """
  entity_ids = entities.labels
  by_world = _groups(entities.worlds)
  ranked = np.full((len(mentions), k), -1, np.int64)
  for world, m_rows in _groups(mentions.worlds).items():
    e_rows = by_world.get(world)
    if e_rows is None:
      raise ValueError(f"Mentions of world {world!r} but no entity of it.")
    top = rank(m_rows, e_rows, k)
    ranked[m_rows, :top.shape[1]] = np.where(top >= 0, entity_ids[e_rows][top], -1)
  return ranked


def recall_report(ranked_ids: np.ndarray, mentions: Records[Mention],
                  ks: Sequence[int], normalize_k: int | None = None) -> dict:
  """recall@k per world, with macro and micro averages over worlds.

  With `normalize_k`, also the linking accuracies of the ranking's first
  entity: unnormalized (over all mentions; = recall@1) and normalized (over
  the mentions whose gold is in the first normalize_k, as for a re-ranker
  over that many candidates; = recall@1 / recall@normalize_k).
  """
  gold = mentions.labels
  ks = sorted(set(ks) | ({1, normalize_k} if normalize_k else set()))
  per_world = {}
  for world, rows in _groups(mentions.worlds).items():
    r = metrics.recall_at_k(ranked_ids[rows], gold[rows], ks)
    if normalize_k:
      r["unnormalized_accuracy"] = r["recall@1"]
      found = r[f"recall@{normalize_k}"]
      r["normalized_accuracy"] = r["recall@1"] / found if found > 0 else float("nan")
    per_world[world] = r
  report = {"per_world": per_world, **metrics.macro_micro(per_world)}
  if normalize_k:
    # Pooled over worlds, normalized accuracy is correct / found, not the
    # count-weighted mean of the per-world ratios (each over its own found).
    found = report[f"micro/recall@{normalize_k}"]
    report["micro/normalized_accuracy"] = (
        report["micro/recall@1"] / found if found > 0 else float("nan"))
    report["normalize_k"] = normalize_k
  return report


def entity_texts(entities: Records[Entity]) -> list[str]:
  return [f"{e.title} {e.text}" for e in entities]


# BM25 queries repeat the mention: its words are what an entity title must
# match, and a whole context otherwise drowns them (KORE50, R@1/R@64: context
# alone 0.15/0.80, mention alone 0.17/0.96, mention x3 + context 0.30/0.96).
BM25_MENTION_REPEAT = 3


def bm25_queries(mentions: Records[Mention]) -> list[str]:
  return [f"{(m.mention + ' ') * BM25_MENTION_REPEAT}{m.context_left}{m.mention}"
          f"{m.context_right}" for m in mentions]


def bm25_ranking(entities: Records[Entity], mentions: Records[Mention],
                 k: int) -> np.ndarray:
  """BM25 ranking per world: the lexical baseline of every results table."""
  index = bm25.BM25Index.build(entity_texts(entities))
  queries = bm25_queries(mentions)

  def rank(m_rows, e_rows, k):
    _, idx = index.search([queries[i] for i in m_rows], k, candidates=e_rows)
    # `search` returns global rows; map them to positions within e_rows.
    pos = np.full(index.num_docs, -1, np.int64)
    pos[e_rows] = np.arange(len(e_rows))
    return np.where(idx >= 0, pos[idx], -1)

  return rank_per_world(rank, entities, mentions, k)


def dense_ranking(query_emb: np.ndarray, entity_emb: np.ndarray,
                  entities: Records[Entity], mentions: Records[Mention],
                  k: int, mesh: Mesh | None = None) -> np.ndarray:
  """Exact dot-product ranking, each mention within its world, through the index."""
  index = index_lib.Index.build(entity_emb, entities.labels, None, entities.worlds,
                                backend="exact", mesh=mesh)
  worlds = None if set(mentions.worlds) == {None} else mentions.worlds
  return index.search(query_emb, k, worlds)[1]


def embed_entities(model, tok: tokenization.Tokenizer, entities: Records[Entity],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Entity-tower embeddings of a catalogue, [E, d], read in a stream."""
  def tokenize(rows):
    es = entities.take(rows)
    return tok.encode_entities([e.title for e in es], [e.text for e in es],
                               config.data.max_entity_len)
  return encode(model.entity_encoder, tokenize, len(entities),
                batch_size=config.eval.batch_size, mesh=mesh, desc="entities")


def embed_mentions(model, tok: tokenization.Tokenizer, mentions: Records[Mention],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Context-tower embeddings of mentions, [N, d]."""
  def tokenize(rows):
    ms = mentions.take(rows)
    return tok.encode_mentions([m.context_left for m in ms], [m.mention for m in ms],
                               [m.context_right for m in ms], config.data.max_context_len)
  return encode(model.context_encoder, tokenize, len(mentions),
                batch_size=config.eval.batch_size, mesh=mesh, desc="mentions")


def biencoder_report(model, tok: tokenization.Tokenizer,
                     entities: Records[Entity], mentions: Records[Mention],
                     config, mesh: Mesh | None = None,
                     entity_emb: np.ndarray | None = None,
                     normalize_k: int | None = None) -> dict:
  """Recall@k of the bi-encoder `model`, per world with macro/micro averages.

  Pass `entity_emb` to reuse a catalogue already embedded by this model;
  `normalize_k` adds the accuracies of `recall_report`.
  """
  ks = list(config.eval.ks)
  if entity_emb is None:
    entity_emb = embed_entities(model, tok, entities, config, mesh)
  ctx = embed_mentions(model, tok, mentions, config, mesh)
  k = max(ks + [normalize_k or 0])
  return recall_report(dense_ranking(ctx, entity_emb, entities, mentions, k, mesh),
                       mentions, ks, normalize_k)


def hard_negatives(model, tok: tokenization.Tokenizer, entities: Records[Entity],
                   mentions: Records[Mention], num: int, config,
                   mesh: Mesh | None = None) -> np.ndarray:
  """The `num` highest-scoring wrong entities of each mention, within its world.

  Returns [N, num] rows into `entities`, -1 where a world has too few.
  """
  ent = embed_entities(model, tok, entities, config, mesh)
  ctx = embed_mentions(model, tok, mentions, config, mesh)
  return negatives_from_ranking(dense_ranking(ctx, ent, entities, mentions, num + 1, mesh),
                                entities, mentions, num)


def negatives_from_ranking(ranked: np.ndarray, entities: Records[Entity],
                           mentions: Records[Mention], num: int) -> np.ndarray:
  """The first `num` non-gold entity ids of each ranking, as rows into `entities`."""
  wrong = (ranked >= 0) & (ranked != mentions.labels[:, None])
  # Stable sort of "is not wrong" moves the wrong ids to the front, in rank order.
  order = np.argsort(~wrong, axis=1, kind="stable")[:, :num]
  keep = np.take_along_axis(wrong, order, axis=1)
  rows = entities.positions_of(np.take_along_axis(ranked, order, axis=1))
  return np.where(keep, rows, -1)
