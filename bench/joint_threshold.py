"""One joint threshold on mention logit + alpha x log(link confidence), measured on a fold.

Today a span is linked when its logit passes the mention threshold and its
link confidence passes the mode's NIL threshold: two separate cuts. ELQ
scores a linked span once, by mention and entity together. This re-decodes
the calibration documents at every mention threshold of the calibration
grid, links every span once per mode, and chooses (decoding threshold,
alpha, tau) for weak linking F1 on them, a span being linked when
logit + alpha * log(confidence) >= tau; the held-out set is then linked at
that choice and beside the stored calibration. No retraining; nothing written.

  python bench/joint_threshold.py --workdir=/tmp/runs/O16 --held_out=oke_2016
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import evaluate, span_metrics, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import documents, sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference import linker as linker_lib  # pylint: disable=g-import-not-at-top

ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Linked:
  """Spans of `docs` decoded at each threshold, each span linked once in `mode`."""

  def __init__(self, lk, docs, thresholds, bonus, mode):
    lc = lk.config.linker
    windows = documents.make_windows(lk.tok, [d.text for d in docs], max_len=lc.max_len,
                                     max_width=lc.max_width)
    logits = lk.span_logits(windows)
    self.decoded = {t: documents.decode_spans(windows, logits, t, len(docs), bonus)
                    for t in thresholds}
    union = sorted({(i, s, e) for pred in self.decoded.values()
                    for i, p in enumerate(pred) for s, e, _ in p})
    self.row = {span: r for r, span in enumerate(union)}
    max_len = lk.config.data.max_context_len
    ms = [linker_lib.mention_of(docs[i].text, s, e, max_len) for i, s, e in union]
    ids, scores = lk.scored(ms, None, mode)
    self.top = ids[:, 0] if len(ids) else np.zeros(0, np.int64)
    self.conf = linker_lib.confidence(scores) if len(ids) else np.zeros(0, np.float32)
    self.docs, self.lk = docs, lk

  def score(self, t, alpha):
    """Per union row, logit + alpha * log(conf) for the spans decoded at t."""
    out = np.full(len(self.top), -np.inf)
    for i, p in enumerate(self.decoded[t]):
      for s, e, logit in p:
        r = self.row[(i, s, e)]
        out[r] = logit + alpha * np.log(max(float(self.conf[r]), 1e-12))
    return out

  def best(self, t, alpha, weak=True):
    golds = [cal.gold_spans(d) for d in self.docs]
    spans = [[(s, e, self.row[(i, s, e)]) for s, e, _ in p]
             for i, p in enumerate(self.decoded[t])]
    return cal.best_nil_threshold(golds, spans, self.top, self.score(t, alpha), weak)

  def report(self, t, alpha, tau, nil_conf=None):
    """span_metrics of the held-out documents: linked iff score >= tau (and, with
    nil_conf, the stored rule: conf >= nil_conf)."""
    s = self.score(t, alpha)
    keys = self.lk.index.key_of(self.top)
    ids = [int(x) if k is None else k for x, k in zip(self.top, keys)]
    def pred(i, p):
      out = []
      for st, e, _ in p:
        r = self.row[(i, st, e)]
        ok = (self.conf[r] >= nil_conf) if nil_conf is not None else (s[r] >= tau)
        out.append((st, e, ids[r], bool(not ok or self.top[r] < 0)))
      return out
    totals = span_metrics.score_documents(
        (evaluate._gold_ids(self.lk, cal.gold_spans(d)), pred(i, p))  # pylint: disable=protected-access
        for i, (d, p) in enumerate(zip(self.docs, self.decoded[t])))
    r = span_metrics.report(totals)
    keys = ("mention_detection/strong/f1", "mention_detection/weak/f1",
            "linking/strong/precision", "linking/strong/recall", "linking/strong/f1",
            "linking/weak/precision", "linking/weak/recall", "linking/weak/f1")
    return {k: round(float(r[k]), 3) for k in keys}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--held_out", required=True)
  p.add_argument("--modes", default="fast,full")
  args = p.parse_args()
  modes = args.modes.split(",")
  lk = linker_lib.Linker.load(args.workdir, mode=modes[0])
  if "full" in modes:
    lk.load_full_mode()
  config = workdir_lib.load_config(args.workdir, "linker")
  data = sources.load(config, args.workdir, documents=True)
  cal_docs, held = data.calibration_documents, data.eval_documents[args.held_out]
  stored = lk.mention_threshold
  # The calibration's grid: quantiles of the calibration documents' span logits.
  lc = lk.config.linker
  w = documents.make_windows(lk.tok, [d.text for d in cal_docs], max_len=lc.max_len,
                             max_width=lc.max_width)
  vals = lk.span_logits(w)[w.valid]
  grid = sorted({float(x) for x in np.quantile(vals, np.linspace(0.8, 0.9999, 60))}
                | {0.0, float(stored)})
  rows = []
  for mode in modes:
    c = Linked(lk, cal_docs, grid, lk.width_bonus, mode)
    h = Linked(lk, held, grid, lk.width_bonus, mode)
    tried = [(c.best(t, a), t, a) for t in grid for a in ALPHAS]
    (f1, tau), t, a = max(tried, key=lambda x: (x[0][0], -x[2]))
    base_t = float(stored)
    rows.append({"mode": mode, "rule": "stored calibration",
                 "mention_threshold": round(stored, 3),
                 "nil_threshold": float(lk.nil_threshold[mode]),
                 **h.report(base_t, 0.0, None, nil_conf=lk.nil_threshold[mode])})
    print(json.dumps(rows[-1]), file=sys.stderr)
    rows.append({"mode": mode, "rule": "joint: logit + alpha log conf >= tau",
                 "decode_threshold": round(t, 3), "alpha": a, "tau": round(tau, 3),
                 "calibration_weak_linking_f1": round(f1, 3), **h.report(t, a, tau)})
    print(json.dumps(rows[-1]), file=sys.stderr)
  print(json.dumps({"bench": "joint_threshold", "workdir": args.workdir,
                    "held_out": args.held_out, "calibration_documents": len(cal_docs),
                    "rows": rows}))


if __name__ == "__main__":
  main()
