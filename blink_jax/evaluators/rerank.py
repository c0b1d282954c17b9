"""The re-ranking evaluator: a cross-encoder over each set's stored candidates."""

from __future__ import annotations

from typing import Any

from absl import logging

from blink_jax import evaluate
from blink_jax.data import pipeline
from blink_jax.inference import ranking
from blink_jax.inference import rerank


class Rerank:
  """Normalized / unnormalized accuracy and candidate recall, per world.

  Reads the stage's candidate lists from `ctx.extra["candidates"]` ({set:
  Candidates}); re-ranks the top `cross.k` of each, by the cross-encoder or,
  with `cross.bi_weight` > 0, by its product with the bi-encoder.
  """

  STAGES = ("crossencoder",)

  def __init__(self, ctx):
    self.ctx = ctx

  def run(self, model: Any, step: int) -> dict[str, dict]:
    c = self.ctx
    cc = c.config.cross
    k = int(cc.k)
    ks = sorted(set(c.config.eval.ks) | {k})
    results = {}
    for name, mentions in c.data.evals.items():
      cands = c.extra["candidates"][name]
      builder = pipeline.PairBuilder(c.tok, c.data.entities_for(mentions), mentions,
                                     cands.top(k).ids, max_context_len=cc.max_context_len,
                                     max_entity_len=cc.max_entity_len)
      scores = rerank.score_candidates(model, builder, mesh=c.mesh,
                                       batch_size=cc.eval_batch_size,
                                       desc=f"re-ranking {name}")
      w = float(cc.get("bi_weight", 0.0))
      if w:  # The cross-encoder alone too, to show what the product adds.
        alone = evaluate.recall_report(rerank.rerank(cands, scores), mentions, ks,
                                       normalize_k=k)
        c.writer.results(f"{name}/cross-encoder alone", alone, step)
        logging.info("%s cross-encoder alone: unnormalized acc %.3f.", name,
                     alone["macro/unnormalized_accuracy"])
        scores = ranking.product(scores, cands.top(k).scores, w)
      r = results[name] = evaluate.recall_report(rerank.rerank(cands, scores), mentions, ks,
                                                 normalize_k=k)
      c.writer.results(f"{name}/bi-encoder + cross-encoder", r, step)
      logging.info("%s cross-encoder (top %d): normalized acc %.3f, unnormalized acc %.3f, "
                   "candidate recall@%d %.3f (macro over worlds).", name, k,
                   r["macro/normalized_accuracy"], r["macro/unnormalized_accuracy"], k,
                   r[f"macro/recall@{k}"])
    return results
