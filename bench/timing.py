"""Alternating A/B timing for the benchmarks that compare us with PyTorch.

On a shared 2-core machine another process can take a core for minutes, and
that slows PyTorch's OpenMP barriers far more than XLA's thread pool, so
timing one side after the other skews the ratio (one run of the train-step
benchmark read 0.91, another 1.49). Here the two sides run alternately, one
call each per round, and each round measures the CPU time other processes
used (from /proc/stat, minus our own); rounds where that exceeds
`max_other_load` cores are discarded and rerun, for at most `max_wait`
seconds, after which the remaining rounds are kept whatever the load and the
result says so.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable


def busy_cpu_seconds() -> float:
  """CPU seconds that all processes have spent busy since boot (Linux)."""
  with open("/proc/stat", encoding="ascii") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Rounds:
  a_s: list[float]
  b_s: list[float]
  other_load: list[float]
  discarded: int
  kept: list[int] = dataclasses.field(default_factory=list)  # Attempt index of each kept round.

  def summary(self, items: int, a: str, b: str, unit: str) -> dict:
    """Medians of items/s per side, their ratio a/b, spreads and load."""
    rate = lambda xs: sorted(items / x for x in xs)
    ra, rb = rate(self.a_s), rate(self.b_s)
    per_round = sorted(tb / ta for ta, tb in zip(self.a_s, self.b_s))
    return {
        f"{a}_{unit}": round(statistics.median(ra), 2),
        f"{b}_{unit}": round(statistics.median(rb), 2),
        "ratio": round(statistics.median(ra) / statistics.median(rb), 3),
        f"{a}_{unit}_min_max": [round(ra[0], 2), round(ra[-1], 2)],
        f"{b}_{unit}_min_max": [round(rb[0], 2), round(rb[-1], 2)],
        "ratio_per_round_min_median_max": [round(per_round[0], 3),
                                           round(statistics.median(per_round), 3),
                                           round(per_round[-1], 3)],
        "repeats": len(self.a_s),
        "rounds_discarded_for_load": self.discarded,
        "other_load_cores_median_max": [round(statistics.median(self.other_load), 2),
                                        round(max(self.other_load), 2)],
    }


def alternate(run_a: Callable[[], None], run_b: Callable[[], None], *, repeats: int,
              max_other_load: float = 0.25, max_wait: float = 900.0) -> Rounds:
  """Times `repeats` rounds of (run_a(), run_b()), rerunning contended rounds."""
  a_s, b_s, others, discarded, kept = [], [], [], 0, []
  deadline = time.monotonic() + max_wait
  attempt = -1
  while len(a_s) < repeats:
    attempt += 1
    busy0, own0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    start = time.perf_counter()
    run_a()
    ta = time.perf_counter() - start
    start = time.perf_counter()
    run_b()
    tb = time.perf_counter() - start
    wall = time.perf_counter() - wall0
    other = ((busy_cpu_seconds() - busy0) - (time.process_time() - own0)) / wall
    if other > max_other_load and time.monotonic() < deadline:
      discarded += 1
      time.sleep(1.0)
      continue
    a_s.append(ta)
    b_s.append(tb)
    others.append(max(other, 0.0))
    kept.append(attempt)
  return Rounds(a_s, b_s, others, discarded, kept)
