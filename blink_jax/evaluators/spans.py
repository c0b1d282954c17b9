"""The end-to-end evaluator: spans found and linked by the linker, ELQ-style P/R/F1."""

from __future__ import annotations

from absl import logging

from blink_jax import evaluate
from blink_jax.inference import linker as linker_lib


class Spans:
  """Mention detection and linking P/R/F1 (strong and weak) on each set's documents.

  `ctx.extra` holds what a Linker needs beside its model: "index",
  "entities", "cross" (a cross-encoder or None: full mode is scored only with
  one) and "calibration".
  """

  STAGES = ("linker",)

  def __init__(self, ctx):
    self.ctx = ctx

  def run(self, model, step: int) -> dict[str, dict]:
    c, x = self.ctx, self.ctx.extra
    modes = ("fast", "full") if x.get("cross") is not None else ("fast",)
    results = {}
    for mode in modes:
      linker = linker_lib.Linker(c.config, c.tok, model, x["index"], x["entities"],
                                 cross=x.get("cross"), calibration=x.get("calibration"),
                                 mode=mode, mesh=c.mesh)
      for name, docs in c.data.eval_documents.items():
        report = results[f"{name}/{mode}"] = evaluate.documents_report(linker, docs, mode)
        c.writer.results(f"{name}/linker {mode}", report, step)
        logging.info("%s linker (%s): mention F1 %.3f (weak %.3f), linking F1 %.3f "
                     "(weak %.3f)", name, mode, report["mention_detection/strong/f1"],
                     report["mention_detection/weak/f1"], report["linking/strong/f1"],
                     report["linking/weak/f1"])
        if report["linking/strong/f1"] > report["mention_detection/strong/f1"]:
          # Not a bug: linking counts neither NIL golds nor spans answered NIL,
          # so a linker that says NIL where unsure can link more precisely than
          # it detects (span_metrics.py, "Families").
          logging.info("%s linker (%s): linking F1 above mention F1, because spans answered "
                       "NIL and NIL golds are outside the linking counts.", name, mode)
    return results
