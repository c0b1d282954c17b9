"""Retrieval evaluation: encode a catalogue and mentions, rank, report recall@k.

Zeshel ranks each mention only against the entities of its own world; other
data (one knowledge base) is a single group. Ranking here is exact (a dot
product and top-k per world on the default device); scale-out search lives in
the index.
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
from tqdm.auto import tqdm

from blink_jax import bm25
from blink_jax import metrics
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax.data.jsonl import Entity, Mention

EmbedFn = Callable[[np.ndarray, np.ndarray], jax.Array]
ALL = "all"  # The group name of data without worlds.


def progress(total: int, *, desc: str, initial: int = 0) -> tqdm:
  """The progress bar of long loops; silent on every process but 0."""
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
              disable=jax.process_index() != 0)


def tower_fn(tower: nnx.Module, mesh: Mesh | None = None) -> EmbedFn:
  """A jitted `(ids, mask) -> embeddings` for one encoder tower, in eval mode.

  Inputs are split over the mesh's devices (and hosts); the output is
  replicated so that every process can read all embeddings.
  """
  mesh = mesh or sharding.make_mesh()
  tower.eval()
  graphdef, state = nnx.split(tower)
  in_sh = sharding.batch_sharding(mesh)

  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def embed(state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)

  def put(x):  # Every process holds the full host array; each sends its shards.
    return jax.make_array_from_callback(x.shape, in_sh, lambda idx: x[idx])

  return lambda ids, mask: embed(state, put(ids), put(mask))


def encode(embed: EmbedFn, batch: tokenization.TokenBatch, *, batch_size: int,
           desc: str = "encoding") -> np.ndarray:
  """Embeds every row of `batch`, `batch_size` rows per call, with a progress bar.

  batch_size is rounded up to a multiple of the device count, and the last
  call is padded to it, so that the function compiles once.
  """
  n_dev = jax.device_count()
  batch_size = -(-batch_size // n_dev) * n_dev
  n = len(batch)
  chunks = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch",
                    disable=jax.process_index() != 0, leave=False):
    ids = batch.ids[start:start + batch_size]
    mask = batch.mask[start:start + batch_size]
    real = ids.shape[0]
    if real < batch_size:
      pad = ((0, batch_size - real), (0, 0))
      # Padding rows hold one [CLS]-like token so no row is fully masked.
      ids, mask = np.pad(ids, pad), np.pad(mask, pad, constant_values=1)
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


# BM25 queries repeat the mention: its words are what an entity title must
# match, and a whole context otherwise drowns them (KORE50, R@1/R@64: context
# alone 0.15/0.80, mention alone 0.17/0.96, mention x3 + context 0.30/0.96).
BM25_MENTION_REPEAT = 3


def bm25_queries(mentions: Sequence[Mention]) -> list[str]:
  return [f"{(m.mention + ' ') * BM25_MENTION_REPEAT}{m.context_left}{m.mention}"
          f"{m.context_right}" for m in mentions]


def bm25_ranking(entities: Sequence[Entity], mentions: Sequence[Mention],
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
                  entities: Sequence[Entity], mentions: Sequence[Mention],
                  k: int) -> np.ndarray:
  """Exact dot-product ranking per world from precomputed embeddings."""
  def rank(m_rows, e_rows, k):
    return rank_exact(query_emb[m_rows], entity_emb[e_rows], k)
  return rank_per_world(rank, entities, mentions, k)


def embed_entities(model, tok: tokenization.Tokenizer, entities: Sequence[Entity],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Entity-tower embeddings of a catalogue, [E, d]."""
  batch = tok.encode_entities([e.title for e in entities], [e.text for e in entities],
                              config.data.max_entity_len)
  return encode(tower_fn(model.entity_encoder, mesh), batch,
                batch_size=config.eval.batch_size, desc="entities")


def embed_mentions(model, tok: tokenization.Tokenizer, mentions: Sequence[Mention],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Context-tower embeddings of mentions, [N, d]."""
  batch = tok.encode_mentions([m.context_left for m in mentions],
                              [m.mention for m in mentions],
                              [m.context_right for m in mentions],
                              config.data.max_context_len)
  return encode(tower_fn(model.context_encoder, mesh), batch,
                batch_size=config.eval.batch_size, desc="mentions")


def biencoder_report(model, tok: tokenization.Tokenizer,
                     entities: Sequence[Entity], mentions: Sequence[Mention],
                     config, mesh: Mesh | None = None,
                     entity_emb: np.ndarray | None = None) -> dict:
  """Recall@k of the bi-encoder `model`, per world with macro/micro averages.

  Pass `entity_emb` to reuse a catalogue already embedded by this model.
  """
  ks = list(config.eval.ks)
  if entity_emb is None:
    entity_emb = embed_entities(model, tok, entities, config, mesh)
  ctx = embed_mentions(model, tok, mentions, config, mesh)
  return recall_report(dense_ranking(ctx, entity_emb, entities, mentions, max(ks)),
                       mentions, ks)


def hard_negatives(model, tok: tokenization.Tokenizer, entities: Sequence[Entity],
                   mentions: Sequence[Mention], num: int, config,
                   mesh: Mesh | None = None) -> np.ndarray:
  """The `num` highest-scoring wrong entities of each mention, within its world.

  Returns [N, num] rows into `entities`, -1 where a world has too few.
  """
  ent = embed_entities(model, tok, entities, config, mesh)
  ctx = embed_mentions(model, tok, mentions, config, mesh)
  ranked = dense_ranking(ctx, ent, entities, mentions, num + 1)
  row_of = {e.id: i for i, e in enumerate(entities)}
  gold = np.asarray([m.label_id for m in mentions])
  out = np.full((len(mentions), num), -1, np.int64)
  for i in range(len(mentions)):
    negs = [row_of[x] for x in ranked[i] if x >= 0 and x != gold[i]][:num]
    out[i, :len(negs)] = negs
  return out
