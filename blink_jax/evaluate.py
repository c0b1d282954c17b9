"""Evaluation reports: recall@k per world, the BM25 baseline, end-to-end span P/R/F1.

Zeshel ranks each mention only against the entities of its own world; other
data (one knowledge base) is a single group. Dense ranking goes through
`inference.retrieve` (the entity index, exact back end, sharded over the mesh).
"""

from __future__ import annotations

import collections
from typing import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from blink_jax import bm25
from blink_jax import metrics
from blink_jax import span_metrics
from blink_jax import tokenization
from blink_jax.data.jsonl import Document, Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import calibration
from blink_jax.inference import linker as linker_lib
from blink_jax.inference import retrieve

ALL = "all"  # The group name of data without worlds.


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


def biencoder_report(model, tok: tokenization.Tokenizer,
                     entities: Records[Entity], mentions: Records[Mention],
                     config, mesh: Mesh | None = None, *,
                     catalogue: retrieve.Catalogue | None = None,
                     normalize_k: int | None = None) -> dict:
  """Recall@k of the bi-encoder `model`, per world with macro/micro averages.

  Pass `catalogue` to reuse entities already embedded by this model;
  `normalize_k` adds the accuracies of `recall_report`.
  """
  ks = list(config.eval.ks)
  catalogue = catalogue or retrieve.Catalogue(model, tok, entities, config, mesh)
  k = max(ks + [normalize_k or 0])
  return recall_report(catalogue.retrieve(mentions, k).ids, mentions, ks, normalize_k)


def documents_report(linker: linker_lib.Linker, docs: list[Document], mode: str) -> dict:
  """ELQ-style P/R/F1 (mention detection and linking, strong and weak) of `linker`."""
  texts = [d.text for d in docs]
  worlds = [d.world for d in docs]
  pred = linker.link(texts, worlds=None if set(worlds) <= {None} else worlds, mode=mode)
  totals = span_metrics.score_documents(
      (calibration.gold_spans(d), [(r["start"], r["end"], r["entity_id"], r["nil"]) for r in p])
      for d, p in zip(docs, pred))
  return {**span_metrics.report(totals), "documents": len(docs)}
