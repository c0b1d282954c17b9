"""Evaluators by name, built from `config.evals` (as big_vision builds them).

  recall   recall@k of a bi-encoder per world (+ accuracies over cross.k)
  bm25     the lexical baseline on the same sets
  rerank   a cross-encoder's re-ranking of the stored candidates
  spans    end-to-end mention detection and linking P/R/F1 per mode

Each evaluator says which stages' models it reads (`STAGES`); a stage runs
those of `config.evals` that apply to it, every `config.eval.every` steps
(0: at the end only) and at the end, and each writes its reports through the
one metric writer under "<set>/<system>" in metrics.json and TensorBoard.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import ml_collections
from jax.sharding import Mesh

from blink_jax import metric_writer
from blink_jax import tokenization
from blink_jax.data import sources
from blink_jax.evaluators import rerank
from blink_jax.evaluators import retrieval
from blink_jax.evaluators import spans


@dataclasses.dataclass
class Context:
  """What evaluators read: the run's config, data and writer, and what the stage made."""

  config: ml_collections.ConfigDict
  data: sources.LinkingData
  tok: tokenization.Tokenizer
  mesh: Mesh
  writer: metric_writer.MetricWriter
  stage: str
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
  STAGES: tuple[str, ...]

  def run(self, model: Any, step: int) -> dict[str, dict]:
    """Reports {eval set: report}, written through the context's writer."""


REGISTRY: dict[str, Callable[[Context], Evaluator]] = {
    "recall": retrieval.Recall,
    "bm25": retrieval.BM25,
    "rerank": rerank.Rerank,
    "spans": spans.Spans,
}


def for_stage(ctx: Context) -> dict[str, Evaluator]:
  """The evaluators of `config.evals` that read the models of `ctx.stage`, by name."""
  names = list(ctx.config.get("evals", REGISTRY))
  unknown = [n for n in names if n not in REGISTRY]
  if unknown:
    raise ValueError(f"Unknown evaluators {unknown} in config.evals; known: {list(REGISTRY)}.")
  return {n: REGISTRY[n](ctx) for n in names if ctx.stage in REGISTRY[n].STAGES}


def periodic(evaluators: dict[str, Evaluator], every: int, model_of: Callable[[Any], Any]
             ) -> Callable[[int, Any], None] | None:
  """A train-loop hook running `evaluators` every `every` steps (None when every <= 0)."""
  if every <= 0 or not evaluators:
    return None

  def hook(step: int, state: Any) -> None:
    if step % every == 0:
      model = model_of(state)
      for evaluator in evaluators.values():
        evaluator.run(model, step)

  return hook
