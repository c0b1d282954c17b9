"""bench/index_rss.py: its tiny mode runs on 2 processes (so the script cannot rot)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "index_rss.py")


@pytest.mark.multiprocess
def test_tiny_mode_runs_on_two_processes(tmp_path):
  # One CPU device per process, as in the full run; the figures of 4k entities mean nothing.
  env = {**os.environ, "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, SCRIPT, "--tiny"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert line["tiny"] is True and line["entities"] == 4096 and line["devices"] == 2
  for path in ("sharded", "replicated_reference"):
    assert [r["process"] for r in line[path]] == [0, 1]
    for r in line[path]:
      assert r["peak_save_bytes"] >= r["peak_build_bytes"] >= r["rss_ready_bytes"] > 0
  assert line["ratio_sharded_over_replicated_peak"] > 0
  # Both paths built the same index.
  assert line["top10_agreement"] == 1.0
