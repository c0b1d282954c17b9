"""Evaluation reports: recall@k per world, the BM25 baseline, end-to-end span P/R/F1.

Zeshel ranks each mention only against the entities of its own world; other
data (one knowledge base) is a single group. Dense ranking goes through
`inference.retrieve` (the entity index, exact back end, sharded over the mesh).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.sharding import Mesh

from blink_jax import metrics
from blink_jax import span_metrics
from blink_jax import tokenization
from blink_jax.data.jsonl import Document, Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import calibration
from blink_jax.inference import lexical
from blink_jax.inference import linker as linker_lib
from blink_jax.inference import retrieve

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
  for world, rows in lexical.groups(mentions.worlds).items():
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


def bm25_ranking(entities: Records[Entity], mentions: Records[Mention], k: int, *,
                 window: int = lexical.DEFAULT_WINDOW) -> np.ndarray:
  """BM25 ranking per world (title + description, windowed query): the lexical baseline."""
  return lexical.Lexical(entities, window=window).rankings(mentions, k)["text"]


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
      (_gold_ids(linker, calibration.gold_spans(d)),
       [(r["start"], r["end"], r["entity_id"], r["nil"]) for r in p])
      for d, p in zip(docs, pred))
  return {**span_metrics.report(totals), "documents": len(docs)}


def _gold_ids(linker: linker_lib.Linker, gold: list[tuple[int, int, int]]) -> list[tuple]:
  """Gold spans named by the catalogue's ids, as the linker's results name entities.

  The documents hold labels (see data/entity_ids.py); for an integer catalogue they are the
  ids already. NIL (-1), and a label the index lacks, stay as they are (they match nothing).
  """
  keys = linker.index.key_of([label for _, _, label in gold])
  return [(s, e, label if label < 0 or key is None else key)
          for (s, e, label), key in zip(gold, keys)]
