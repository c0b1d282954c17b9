"""Separate cuts for spans in lower case, chosen on the calibration documents.

Common nouns are what the OKE sets mark only sometimes (bench/linking_errors.py).
This tries linking a lower-case span only when its mention logit and its
full-mode confidence pass their own thresholds, chosen on WORKDIR's calibration
documents for weak linking F1 (capitalised spans keep the calibrated rule),
and reports the held-out set's weak linking F1 with and without those cuts,
and with no lower-case span linked. No retraining; nothing in WORKDIR is
written. Prints one JSON line.

  python bench/lowercase_cut.py --workdir=/tmp/runs/oke_2016 --held_out=oke_2016
"""
import argparse
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import evaluate, span_metrics, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker, confidence, mention_of  # pylint: disable=g-import-not-at-top

MODE = "full"


def detected(lk: Linker, docs) -> dict:
  """The calibrated linker's spans of `docs`, linked once in full mode."""
  spans = lk.detect([d.text for d in docs])
  flat = [(i, s, e, logit) for i, p in enumerate(spans) for s, e, logit in p]
  ms = [mention_of(docs[i].text, s, e, lk.config.data.max_context_len) for i, s, e, _ in flat]
  ids, scores = lk.scored(ms, None, MODE)
  return {"flat": flat, "top": ids[:, 0], "conf": confidence(scores),
          "lower": np.array([docs[i].text[s:e][:1].islower() for i, s, e, _ in flat]),
          "logit": np.array([logit for *_, logit in flat]),
          "golds": [evaluate._gold_ids(lk, cal.gold_spans(d)) for d in docs]}  # pylint: disable=protected-access


def weak_f1(d: dict, nil_threshold: float, t_lower: float, c_lower: float) -> float:
  keep = np.where(d["lower"], (d["logit"] >= t_lower) & (d["conf"] >= c_lower),
                  d["conf"] >= nil_threshold)
  per_doc = [[] for _ in d["golds"]]
  for k, (i, s, e, _) in enumerate(d["flat"]):
    per_doc[i].append((s, e, int(d["top"][k]), not keep[k]))
  return span_metrics.report(span_metrics.score_documents(
      zip(d["golds"], per_doc)))["linking/weak/f1"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  args = parser.parse_args()
  lk = Linker.load(args.workdir, mode="fast")
  lk.load_full_mode()
  data = sources.load(workdir_lib.load_config(args.workdir, "linker"), args.workdir,
                      documents=True)
  calib, held = detected(lk, data.calibration_documents), detected(
      lk, data.eval_documents[args.held_out])
  nil = lk.nil_threshold[MODE]
  low = calib["lower"]
  t_grid = [-np.inf, *np.quantile(calib["logit"][low], np.linspace(0, 1, 11)), np.inf]
  c_grid = sorted({nil, *np.quantile(calib["conf"][low], np.linspace(0, 1, 11))})
  # Ties go to the lowest thresholds (-inf and the NIL threshold: today's rule).
  best = max((weak_f1(calib, nil, t, c), -t, -c) for t, c in itertools.product(t_grid, c_grid))
  t, c = -best[1], -best[2]
  print(json.dumps({
      "bench": "lowercase_cut", "workdir": args.workdir, "held_out": args.held_out,
      "calibration_documents": {"calibrated_rule": round(weak_f1(calib, nil, -np.inf, nil), 3),
                                "with_lower_case_cuts": round(best[0], 3)},
      "lower_case_logit_cut": t, "lower_case_confidence_cut": c,
      "held_out_weak_linking_f1": {
          "calibrated_rule": round(weak_f1(held, nil, -np.inf, nil), 3),
          "with_lower_case_cuts": round(weak_f1(held, nil, t, c), 3),
          "no_lower_case_span_linked": round(weak_f1(held, nil, np.inf, 0.0), 3)}}))


if __name__ == "__main__":
  main()
