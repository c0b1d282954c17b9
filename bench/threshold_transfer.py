"""Does the mention threshold chosen on the calibration documents transfer to the held-out set?

For the linker of WORKDIR (its calibrated width bonus), at every mention
threshold of the calibration grid (`calibration.threshold_grid`, 0 and up):
weak linking F1 on the calibration documents (each with its best NIL
threshold; also per training set the documents come from), and on the
held-out documents, with the calibration's NIL threshold and with the
held-out set's own best (an oracle: a ceiling for any choice of thresholds,
never a result). Then the held-out figure of some rules for picking the
threshold from the calibration curve alone:
  recipe            the best at or above the mention-F1 threshold (what
                    `calibrate` does today; equals the stored calibration);
  best              the best over the whole grid;
  lowest_within_se  the lowest threshold within one bootstrap standard error
                    of the best (the difference, paired over resampled
                    calibration documents);
  bootstrap_mean    the best of the curve averaged over resampled documents.
No retraining; nothing in WORKDIR is written. Prints one JSON line.

  python bench/threshold_transfer.py --workdir=/tmp/runs/oke_2016 --held_out=oke_2016
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import span_metrics  # pylint: disable=g-import-not-at-top
from blink_jax.data import documents, sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker, confidence, mention_of  # pylint: disable=g-import-not-at-top


class Decoded:
  """One document set decoded at every threshold, its spans linked once per mode."""

  def __init__(self, lk: Linker, docs, thresholds, bonus: float, modes):
    """`thresholds` None: calibrate's grid from these documents' span logits, 0 and up."""
    lc = lk.config.linker
    windows = documents.make_windows(lk.tok, [d.text for d in docs], max_len=lc.max_len,
                                     max_width=lc.max_width)
    logits = lk.span_logits(windows)
    if thresholds is None:
      thresholds = [float(t) for t in cal.threshold_grid(logits[windows.valid]) if t >= 0]
    self.thresholds = thresholds
    self.golds = [cal.gold_spans(d) for d in docs]
    self.sets = [str(d.id).split("-")[0] for d in docs]
    self.spans = {t: documents.decode_spans(windows, logits, t, len(docs), bonus)
                  for t in thresholds}
    union = sorted({(i, s, e) for pred in self.spans.values() for i, p in enumerate(pred)
                    for s, e, _ in p})
    self.row = {u: r for r, u in enumerate(union)}
    max_len = lk.config.data.max_context_len
    mentions = [mention_of(docs[i].text, s, e, max_len) for i, s, e in union]
    self.linked = {}
    for mode in modes:
      ids, scores = lk.scored(mentions, None, mode)
      self.linked[mode] = (ids[:, 0], confidence(scores))

  def best(self, t: float, mode: str, docs=None) -> tuple[float, float]:
    """(weak linking F1, NIL threshold) at mention threshold t, the NIL threshold the best."""
    docs = range(len(self.golds)) if docs is None else docs
    top, conf = self.linked[mode]
    pred = self.spans[t]
    return cal.best_nil_threshold([self.golds[i] for i in docs],
                                  [[(s, e, self.row[(i, s, e)]) for s, e, _ in pred[i]]
                                   for i in docs], top, conf, True)

  def f1(self, t: float, mode: str, nil: float) -> float:
    """Weak linking F1 at mention threshold t and NIL threshold `nil`."""
    top, conf = self.linked[mode]
    totals = span_metrics.score_documents(
        (gold, [(s, e, int(top[r]), bool(conf[r] < nil or top[r] < 0))
                for s, e, _ in pred for r in (self.row[(i, s, e)],)])
        for i, (gold, pred) in enumerate(zip(self.golds, self.spans[t])))
    return totals["linking/weak"].f1


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  parser.add_argument("--modes", default="fast,full")
  parser.add_argument("--bootstraps", type=int, default=100)
  args = parser.parse_args()
  t0 = time.time()
  modes = tuple(args.modes.split(","))
  lk = Linker.load(args.workdir, mode=modes[0])
  if "full" in modes:
    lk.load_full_mode()
  stored = lk.calibration
  bonus = float(stored.get("width_bonus", 0.0))
  data = sources.load(lk.config, args.workdir, documents=True)  # The linker's stored config.
  cal_docs, held_docs = data.calibration_documents, data.eval_documents[args.held_out]
  c = Decoded(lk, cal_docs, None, bonus, modes)
  grid = c.thresholds
  h = Decoded(lk, held_docs, grid, bonus, modes)
  floor = float(stored.get("mention_f1_threshold", stored["mention_threshold"]))
  rng = np.random.default_rng(0)
  boots = [rng.integers(0, len(cal_docs), len(cal_docs)).tolist()
           for _ in range(args.bootstraps)]
  # Each mode's calibration curve (F1, NIL threshold) and its resampled F1s; the
  # threshold is shared by the modes, so the rules read the modes' mean, as calibrate does.
  curve = {m: [c.best(t, m) for t in grid] for m in modes}
  f = np.mean([[x[0] for x in curve[m]] for m in modes], 0)
  boot = np.mean([[[c.best(t, m, idx)[0] for t in grid] for idx in boots] for m in modes], 0)
  j_best = int(np.argmax(f))
  se = (boot[:, [j_best]] - boot).std(0)  # Paired: the same resampled documents.
  rules = {"recipe": max((j for j in range(len(grid)) if grid[j] >= floor),
                         key=lambda j: (f[j], -j)),
           "best": j_best,
           "lowest_within_se": min(j for j in range(len(grid)) if f[j] >= f[j_best] - se[j]),
           "bootstrap_mean": int(np.argmax(boot.mean(0)))}
  out = {"bench": "threshold_transfer", "workdir": args.workdir, "held_out": args.held_out,
         "calibration_documents": len(cal_docs), "held_out_documents": len(held_docs),
         "width_bonus": bonus, "stored_mention_threshold": stored["mention_threshold"],
         "thresholds": [round(t, 3) for t in grid],
         "calibration_f1_mean_of_modes": [round(x, 4) for x in f],
         "rules": {name: round(grid[j], 3) for name, j in rules.items()}, "modes": {}}
  for mode in modes:
    sets = sorted(set(c.sets))
    held = [h.f1(t, mode, nil) for t, (_, nil) in zip(grid, curve[mode])]
    oracle = [h.best(t, mode)[0] for t in grid]
    out["modes"][mode] = {
        "held_out_f1": {name: round(held[j], 4) for name, j in rules.items()},
        "held_out_oracle": {"threshold": round(grid[int(np.argmax(oracle))], 3),
                            "f1": round(max(oracle), 4)},
        "curve": {"calibration_f1": [round(x[0], 4) for x in curve[mode]],
                  "calibration_f1_by_set": {
                      s: [round(c.best(t, mode, [i for i, x in enumerate(c.sets) if x == s])[0],
                                4) for t in grid] for s in sets},
                  "held_out_f1": [round(x, 4) for x in held],
                  "held_out_oracle_f1": [round(x, 4) for x in oracle],
                  "held_out_spans": [sum(map(len, h.spans[t])) for t in grid]}}
    print(f"{mode}: held-out weak linking F1 by rule {out['modes'][mode]['held_out_f1']}, "
          f"oracle {out['modes'][mode]['held_out_oracle']}", file=sys.stderr)
  out["seconds"] = round(time.time() - t0)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
