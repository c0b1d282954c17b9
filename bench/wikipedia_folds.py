"""The real-text recipe, leave one set out: train with each wikiel dev set held out, report on it.

For each fold (KORE50, oke_2015, oke_2016) runs configs/wikipedia.py:fold=<set> in
WORKDIR/<set> (resuming what is there), then reads the held-out set's figures from
metrics.json: R@1/10/64 of BM25, the trained bi-encoder, the hybrid candidates and
the cross-encoder re-ranking, and end-to-end mention / linking F1 (strong and weak)
of both linker modes. No figure comes from a set that was trained on. Prints one
JSON line.

  python bench/wikipedia_folds.py --workdir=/tmp/wiki_folds [--folds=oke_2015] \\
      [-- --config.cross.train.num_steps=250 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ("KORE50", "oke_2015", "oke_2016")
# "re-ranked" is the recipe's re-ranker (the cross-encoder's product with the
# bi-encoder when cross.bi_weight > 0); "cross-encoder alone" is reported then too.
SYSTEMS = {"BM25": "BM25", "bi-encoder": "bi-encoder", "hybrid": "bi-encoder, hybrid",
           "cross-encoder alone": "cross-encoder alone",
           "re-ranked": "bi-encoder + cross-encoder"}


def fold_report(metrics: dict, held_out: str) -> dict:
  out = {}
  for short, name in SYSTEMS.items():
    r = metrics.get(f"{held_out}/{name}")
    if r is not None:
      out[short] = {f"R@{k}": round(r[f"macro/recall@{k}"], 3) for k in (1, 10, 64)
                    if f"macro/recall@{k}" in r}
  for mode in ("fast", "full"):
    r = metrics.get(f"{held_out}/linker {mode}")
    if r is not None:
      out[f"linker {mode}"] = {
          f"{family}/{match}/{stat}": round(r[f"{family}/{match}/{stat}"], 3)
          for family in ("mention_detection", "linking") for match in ("strong", "weak")
          for stat in ("precision", "recall", "f1")}
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--folds", default=",".join(SETS))
  parser.add_argument("overrides", nargs="*", help="extra --config.* flags, after --")
  args = parser.parse_args()
  results = {}
  for fold in [f for f in args.folds.split(",") if f]:
    workdir = os.path.join(args.workdir, fold)
    subprocess.run([sys.executable, "-m", "blink_jax.main",
                    f"--config=configs/wikipedia.py:fold={fold}", f"--workdir={workdir}",
                    *args.overrides], cwd=REPO, check=True)
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
      results[fold] = fold_report(json.load(f), fold)
  print(json.dumps({"bench": "wikipedia_folds", "folds": results}))


if __name__ == "__main__":
  main()
