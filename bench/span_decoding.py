"""Alternatives to the linker's span decoding, measured on a trained fold's linker.

`documents.decode_spans` keeps spans greedily by logit + width_bonus x extra word
pieces. This tries two restrictions of that rule on the fold's calibration
documents (threshold chosen there) and reports the held-out set's strong mention
F1 at that threshold: a cap on the pieces the bonus counts, and dropping a span
that contains a passing sub-span scoring more than `margin` above it. The
unrestricted rule (cap 100, no margin) must equal decode_spans (checked). Prints
one JSON line.

  python bench/span_decoding.py --workdir=/tmp/wiki_oke16 --held_out=oke_2016
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from blink_jax import span_metrics, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import documents, sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker  # pylint: disable=g-import-not-at-top


def decode(windows, logits, thr, n, bonus, cap, margin):
  out = []
  for d in documents.candidate_spans(windows, logits, thr, n):
    items = list(d.items())
    if margin is not None:
      items = [((s, e), (sc, w)) for (s, e), (sc, w) in items
               if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) and sc2 > sc + margin
                          for (s2, e2), (sc2, _) in items)]
    order = sorted(items, key=lambda x: (-(x[1][0] + bonus * min(x[1][1], cap)), x[0]))
    kept = []
    for (s, e), (sc, _) in order:
      if all(e <= ks or s >= ke for ks, ke, _ in kept):
        kept.append((s, e, sc))
    out.append(sorted(kept))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  args = parser.parse_args()
  lk = Linker.load(args.workdir)
  config = workdir_lib.load_config(args.workdir, "linker")
  data = sources.load(config, args.workdir, documents=True)
  lc = lk.config.linker
  res = {}
  for name, docs in (("calibration", data.calibration_documents),
                     (args.held_out, data.eval_documents[args.held_out])):
    windows = documents.make_windows(lk.tok, [d.text for d in docs], max_len=lc.max_len,
                                     max_width=lc.max_width)
    logits = lk.span_logits(windows)
    vals = logits[windows.valid]
    grid = np.unique(np.concatenate([[0.0], np.quantile(vals, np.linspace(0.8, 0.9999, 60))]))
    res[name] = (docs, windows, logits, grid)
    ref = documents.decode_spans(windows, logits, float(grid[-5]), len(docs), 1.0)
    assert decode(windows, logits, float(grid[-5]), len(docs), 1.0, 100, None) == ref

  def f1(name, thr, rule):
    docs, windows, logits, _ = res[name]
    pred = decode(windows, logits, thr, len(docs), *rule)
    sc = span_metrics.score_documents(
        ([(s, e, -1) for s, e, _ in cal.gold_spans(d)], [(s, e, -1) for s, e, _ in p])
        for d, p in zip(docs, pred))
    return sc["mention_detection/strong"].f1, sum(len(p) for p in pred)

  rows = []
  for bonus in (0.0, 0.5, 1.0, 2.0):
    for cap in ((100,) if bonus == 0.0 else (1, 2, 3, 100)):
      for margin in (None, 0.0, 0.5, 1.0):
        rule = (bonus, cap, margin)
        cal_f1, thr = max((f1("calibration", float(t), rule)[0], float(t))
                          for t in res["calibration"][3])
        test_f1, npred = f1(args.held_out, thr, rule)
        rows.append({"width_bonus": bonus, "cap_pieces": cap, "containment_margin": margin,
                     "calibration_f1": round(cal_f1, 3), "threshold": round(thr, 2),
                     f"{args.held_out}_f1": round(test_f1, 3), "predicted_spans": npred})
  print(json.dumps({"bench": "span_decoding", "workdir": args.workdir,
                    "calibration_documents": len(res["calibration"][0]),
                    "held_out_documents": len(res[args.held_out][0]), "rules": rows}))


if __name__ == "__main__":
  main()
