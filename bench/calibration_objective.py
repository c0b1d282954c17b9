"""What the linker's calibration maximises, measured on a trained fold's linker.

Re-calibrates the linker of WORKDIR on its calibration documents under each
`linker.calibration_objective` (strong mention F1, the default, then weak and
strong linking F1, each with the confidence alone and then with the joint cut
of `linker.link_alpha_grid` as well; inference/calibration.py) and reports, per objective and
mode, the thresholds chosen and the held-out set's end-to-end figures; then
the held-out gold spans given to the linker (detection as an oracle). No
retraining; nothing in WORKDIR is written. Prints one JSON line.

  python bench/calibration_objective.py --workdir=/tmp/runs/KORE50 --held_out=KORE50
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import evaluate, span_metrics, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker, mention_of  # pylint: disable=g-import-not-at-top

# (objective, link_alpha_grid): each linking objective with the confidence alone,
# then with the joint cut logit + alpha log(confidence) as well.
ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
OBJECTIVES = ((cal.MENTION_F1, ()), *((o, ()) for o in cal.LINKING_F1),
              *((o, ALPHAS) for o in cal.LINKING_F1))
KEYS = ("mention_detection/strong/f1", "mention_detection/weak/f1", "linking/strong/precision",
        "linking/strong/recall", "linking/strong/f1", "linking/weak/precision",
        "linking/weak/recall", "linking/weak/f1",
        "mention_detection/strong/num_pred", "mention_detection/strong/num_gold")


def _with_objective(lk: Linker, objective: str, alphas=()) -> Linker:
  with lk.config.unlocked():
    lk.config.linker.calibration_objective = objective
    lk.config.linker.link_alpha_grid = tuple(alphas)
  return lk


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  parser.add_argument("--modes", default="fast,full")
  args = parser.parse_args()
  modes = tuple(args.modes.split(","))
  lk = Linker.load(args.workdir, mode=modes[0])
  if "full" in modes:
    lk.load_full_mode()
  config = workdir_lib.load_config(args.workdir, "linker")
  data = sources.load(config, args.workdir, documents=True)
  held = data.eval_documents[args.held_out]
  rows = []
  for objective, alphas in OBJECTIVES:
    t = time.time()
    found = cal.calibrate(_with_objective(lk, objective, alphas), data.calibration_documents,
                          modes)
    seconds = time.time() - t
    for mode in modes:
      linker = Linker(lk.config, lk.tok, lk.model, lk.index, lk.entities, cross=lk.cross,
                      calibration=found, mode=mode, mesh=lk.mesh)
      report = evaluate.documents_report(linker, held, mode)
      rule = found.get("link_rule", {}).get(mode)
      rows.append({"objective": objective, "mode": mode, "link_alpha_grid": list(alphas),
                   "link_rule": rule and {k: round(v, 3) for k, v in rule.items()},
                   "mention_threshold": round(found["mention_threshold"], 3),
                   "nil_threshold": (round(nil, 4) if math.isfinite(nil := float(
                       found["nil_threshold"][mode])) else None),
                   "calibration_seconds": round(seconds),
                   **{k: round(report[k], 3) for k in KEYS}})
      print(json.dumps(rows[-1]), file=sys.stderr)
  # Detection as an oracle: the held-out gold spans (NIL golds too) linked by
  # the mention-F1 calibration's linker; what linking alone loses.
  found = cal.calibrate(_with_objective(lk, cal.MENTION_F1), data.calibration_documents, modes)
  for mode in modes:
    linker = Linker(lk.config, lk.tok, lk.model, lk.index, lk.entities, cross=lk.cross,
                    calibration=found, mode=mode, mesh=lk.mesh)
    max_len = lk.config.data.max_context_len
    golds = [cal.gold_spans(d) for d in held]
    linked = linker.disambiguate([mention_of(d.text, s, e, max_len)
                                  for d, g in zip(held, golds) for s, e, _ in g], mode=mode)
    it = iter(linked)
    totals = span_metrics.score_documents(
        (evaluate._gold_ids(linker, g),  # pylint: disable=protected-access
         [(s, e, (r := next(it))["entity_id"], r["nil"]) for s, e, _ in g])
        for g in golds)
    report = span_metrics.report(totals)
    rows.append({"objective": "gold spans given (oracle detection)", "mode": mode,
                 **{k: round(report[k], 3) for k in KEYS}})
    print(json.dumps(rows[-1]), file=sys.stderr)
  print(json.dumps({"bench": "calibration_objective", "workdir": args.workdir,
                    "calibration_documents": len(data.calibration_documents),
                    "held_out": args.held_out, "held_out_documents": len(held),
                    "rows": rows}))


if __name__ == "__main__":
  main()
