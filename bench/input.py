"""Training input off the critical path: the demo's bi-encoder steps/s with the
grain loader's worker threads (config.input.num_threads=2) against batches built
in the loop (num_threads=0, the reference: how every stage trained before).

Alternated rounds of the bi-encoder stage in fresh processes on fresh workdirs,
demo config, `--steps` steps; steps/s is the median of the logged windows after
the first (which holds compilation). Prints one JSON line.

  python bench/input.py --steps 60 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(threads: int, steps: int, log_every: int) -> float:
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py",
           f"--workdir={workdir}", "--config.mode=train_biencoder",
           f"--config.train.num_steps={steps}", f"--config.train.log_every={log_every}",
           "--config.hard_negatives.num=0", "--config.evals=()",
           f"--config.input.num_threads={threads}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      rates = [r["train/steps_per_s"] for r in map(json.loads, f) if "train/steps_per_s" in r]
  return statistics.median(rates[1:])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  threaded, inline = [], []
  for _ in range(args.rounds):  # Alternated, so drift hits both alike.
    threaded.append(run(2, args.steps, args.log_every))
    inline.append(run(0, args.steps, args.log_every))
  ratios = [a / b for a, b in zip(threaded, inline)]
  print(json.dumps({
      "bench": "input", "config": "demo bi-encoder (MiniLM 2 layers, batch 32)",
      "steps": args.steps, "steps_per_s_threads_2": threaded,
      "steps_per_s_inline_reference": inline,
      "ratio_threads_over_inline_median": statistics.median(ratios)}))


if __name__ == "__main__":
  main()
