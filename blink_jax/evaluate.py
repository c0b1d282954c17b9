"""Retrieval evaluation: encode a catalogue and mentions, rank, report recall@k.

Zeshel ranks each mention only against the entities of its own world; other
data (one knowledge base) is a single group. Ranking here is exact (a dot
product and top-k per world on the default device); scale-out search lives in
the index.
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from blink_jax import bm25
from blink_jax import metrics
from blink_jax import tokenization
from blink_jax.data.jsonl import Entity, Mention

EmbedFn = Callable[[np.ndarray, np.ndarray], jax.Array]
ALL = "all"  # The group name of data without worlds.


def tower_fn(tower: nnx.Module) -> EmbedFn:
  """A jitted `(ids, mask) -> embeddings` for one encoder tower, in eval mode."""
  tower.eval()
  graphdef, state = nnx.split(tower)

  @jax.jit
  def embed(state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)

  return lambda ids, mask: embed(state, ids, mask)


def encode(embed: EmbedFn, batch: tokenization.TokenBatch, *, batch_size: int,
           desc: str = "encoding") -> np.ndarray:
  """Embeds every row of `batch`, `batch_size` rows per call.

  The last call is padded to `batch_size` so that the function compiles once.
  """
  n = len(batch)
  chunks = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    disable=jax.process_index() != 0, leave=False):
    ids = batch.ids[start:start + batch_size]
    mask = batch.mask[start:start + batch_size]
    real = ids.shape[0]
    if real < batch_size:
      pad = ((0, batch_size - real), (0, 0))
      ids, mask = np.pad(ids, pad), np.pad(mask, pad)
    chunks.append(np.asarray(embed(ids, mask))[:real])
  return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _groups(worlds: Sequence[str | None]) -> dict[str, np.ndarray]:
  rows = collections.defaultdict(list)
  for i, w in enumerate(worlds):
    rows[w if w is not None else ALL].append(i)
  return {w: np.asarray(r, np.int64) for w, r in sorted(rows.items())}


@jax.jit
def _scores(q, e):
  return q @ e.T


def rank_exact(queries: np.ndarray, entities: np.ndarray, k: int,
               chunk: int = 1024) -> np.ndarray:
  """Row indices of the k best entities per query, by dot product, best first."""
  k = min(k, entities.shape[0])
  e = jnp.asarray(entities)
  out = []
  for start in range(0, queries.shape[0], chunk):
    _, idx = jax.lax.top_k(_scores(jnp.asarray(queries[start:start + chunk]), e), k)
    out.append(np.asarray(idx))
  return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def rank_per_world(rank: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
                   entities: Sequence[Entity], mentions: Sequence[Mention],
                   k: int) -> np.ndarray:
  """Ranks each mention against its own world's entities; returns entity ids.

  `rank(query_rows, entity_rows, k)` returns, per query row, positions into
  entity_rows, best first. Worlds are those of the records (None = one KB).
  Rows are padded with -1 where a world has fewer than k entities.
  """
  entity_ids = np.asarray([e.id for e in entities], np.int64)
  by_world = _groups([e.world for e in entities])
  ranked = np.full((len(mentions), k), -1, np.int64)
  for world, m_rows in _groups([m.world for m in mentions]).items():
    e_rows = by_world.get(world)
    if e_rows is None:
      raise ValueError(f"Mentions of world {world!r} but no entity of it.")
    top = rank(m_rows, e_rows, k)
    ranked[m_rows, :top.shape[1]] = np.where(top >= 0, entity_ids[e_rows][top], -1)
  return ranked


def recall_report(ranked_ids: np.ndarray, mentions: Sequence[Mention],
                  ks: Sequence[int]) -> dict:
  """recall@k per world, with macro and micro averages over worlds."""
  gold = np.asarray([m.label_id for m in mentions], np.int64)
  per_world = {
      world: metrics.recall_at_k(ranked_ids[rows], gold[rows], ks)
      for world, rows in _groups([m.world for m in mentions]).items()}
  return {"per_world": per_world, **metrics.macro_micro(per_world)}


def entity_texts(entities: Sequence[Entity]) -> list[str]:
  return [f"{e.title} {e.text}" for e in entities]


def mention_texts(mentions: Sequence[Mention]) -> list[str]:
  return [f"{m.context_left}{m.mention}{m.context_right}" for m in mentions]


def bm25_ranking(entities: Sequence[Entity], mentions: Sequence[Mention],
                 k: int) -> np.ndarray:
  """BM25 ranking per world: the lexical baseline of every results table."""
  index = bm25.BM25Index.build(entity_texts(entities))
  queries = mention_texts(mentions)

  def rank(m_rows, e_rows, k):
    _, idx = index.search([queries[i] for i in m_rows], k, candidates=e_rows)
    # `search` returns global rows; map them to positions within e_rows.
    pos = np.full(index.num_docs, -1, np.int64)
    pos[e_rows] = np.arange(len(e_rows))
    return np.where(idx >= 0, pos[idx], -1)

  return rank_per_world(rank, entities, mentions, k)


def dense_ranking(query_emb: np.ndarray, entity_emb: np.ndarray,
                  entities: Sequence[Entity], mentions: Sequence[Mention],
                  k: int) -> np.ndarray:
  """Exact dot-product ranking per world from precomputed embeddings."""
  def rank(m_rows, e_rows, k):
    return rank_exact(query_emb[m_rows], entity_emb[e_rows], k)
  return rank_per_world(rank, entities, mentions, k)
