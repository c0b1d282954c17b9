"""Retrieval evaluators: a bi-encoder's recall@k, and the BM25 baseline beside it."""

from __future__ import annotations

from typing import Any

from absl import logging

from blink_jax import evaluate
from blink_jax.inference import lexical
from blink_jax.inference import retrieve

# A stage's bi-encoder, as results tables name it.
LABELS = {"biencoder": "bi-encoder", "distill": "distilled bi-encoder"}


def _normalize_k(config) -> int | None:
  # Accuracies over the candidates the cross-encoder will re-rank, so every
  # system's report has the columns of the cross-encoder's.
  return int(config.cross.k) if "cross" in config else None


def _uses_hybrid(config) -> bool:
  return bool(config.get("retrieval") and (config.retrieval.hybrid
                                           or config.hard_negatives.get("hybrid", False)))


def _window(config) -> int:
  r = config.get("retrieval")
  return int(r.window) if r is not None else lexical.DEFAULT_WINDOW


def _log(name: str, system: str, report: dict, ks) -> None:
  logging.info("%s %s: %s", name, system, " ".join(
      f"R@{k}={report[f'macro/recall@{k}']:.3f}" for k in ks))


class Recall:
  """recall@k per world of a bi-encoder on every evaluation set.

  Each distinct catalogue (Zeshel: the worlds of a set) is embedded once per
  call; with the stage's `model_id` (ctx.extra) the embeddings are shared
  with every other user of that trained model in the process.
  """

  STAGES = ("biencoder", "distill")

  def __init__(self, ctx):
    self.ctx = ctx
    self.label = LABELS[ctx.stage]

  def run(self, model: Any, step: int, model_id: dict | None = None) -> dict[str, dict]:
    c = self.ctx
    ks = list(c.config.eval.ks)
    results, catalogues = {}, {}
    for name, mentions in c.data.evals.items():
      entities = c.data.entities_for(mentions)
      key = entities.labels.tobytes()
      if key not in catalogues:
        catalogues[key] = retrieve.catalogue(model, c.tok, entities, c.config, c.mesh,
                                             model_id=model_id)
      results[name] = evaluate.biencoder_report(
          model, c.tok, entities, mentions, c.config, c.mesh, catalogue=catalogues[key],
          normalize_k=_normalize_k(c.config))
      c.writer.results(f"{name}/{self.label}", results[name], step)
      _log(name, self.label, results[name], ks)
      if _uses_hybrid(c.config):
        # This model fused with BM25 (what mining or the later stages read).
        hybrid = retrieve.retriever(catalogues[key], c.config, hybrid=True)
        label = f"{self.label}, hybrid"
        results[f"{name}/hybrid"] = evaluate.recall_report(
            hybrid.retrieve(mentions, max(ks + [_normalize_k(c.config) or 0])).ids,
            mentions, ks, _normalize_k(c.config))
        c.writer.results(f"{name}/{label}", results[f"{name}/hybrid"], step)
        _log(name, label, results[f"{name}/hybrid"], ks)
    return results


class BM25:
  """The lexical baseline beside every evaluation, as in the paper's tables.

  It reads no model: it runs once per evaluator, whatever `run` is given.
  """

  STAGES = ("biencoder",)

  def __init__(self, ctx):
    self.ctx = ctx
    self._results: dict[str, dict] | None = None

  def run(self, model: Any = None, step: int = 0) -> dict[str, dict]:
    del model
    c = self.ctx
    if self._results is None:
      ks = list(c.config.eval.ks)
      norm_k = _normalize_k(c.config)
      self._results = {}
      for name, mentions in c.data.evals.items():
        entities = c.data.entities_for(mentions)
        self._results[name] = evaluate.recall_report(
            evaluate.bm25_ranking(entities, mentions, max(ks + [norm_k or 0]),
                                  window=_window(c.config)), mentions,
            ks, norm_k)
        c.writer.results(f"{name}/BM25", self._results[name], step)
        _log(name, "BM25", self._results[name], ks)
    return self._results
