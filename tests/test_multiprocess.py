"""Two JAX processes on localhost run the whole chain (and build an index) exactly like one.

The global batch of every step is the same whatever the number of processes
(each process reads its own block of it), so every logged loss and every
reported metric of a 2-process run must equal those of a 1-process run.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import index_worker
import tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two(tmp_path, name, data, cmd):
  port = _free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(
      cmd(tmp_path / name, data, f"--coordinator_address=localhost:{port}",
          "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=1200)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _pipeline_cmd(workdir, data_dir, *extra):
  return [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py:runlocal",
          f"--workdir={workdir}", f"--config.data.dir={data_dir}", *extra]


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
    return out
  return {prefix.rstrip("/"): tree}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_every_stage_on_two_processes_matches_one_process(tmp_path):
  # The whole chain (bi-encoder with mined hard negatives, candidates, cross-encoder
  # training and re-ranking, distillation, index build and save, linker training and
  # calibration): every number it reports and every loss it logs must not depend on
  # how many processes computed it. The synthetic worlds are written by the
  # two-process run itself (process 0 writes, process 1 waits).
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  one = subprocess.run(_pipeline_cmd(tmp_path / "one", tmp_path / "data1"), cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=1200)
  assert one.returncode == 0, one.stderr[-3000:]
  outs = _run_two(tmp_path, "two", tmp_path / "data2", _pipeline_cmd)
  assert "process 1/2, 2 local / 4 global devices" in outs[1]

  def metrics(name):
    with open(tmp_path / name / "metrics.json") as f:
      return _flatten(json.load(f))

  a, b = metrics("one"), metrics("two")
  assert a.keys() == b.keys()
  numbers = [k for k, v in a.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
  assert len(numbers) > 50, sorted(a)
  for k in a:
    if k in numbers:
      assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (k, a[k], b[k])
    elif "time" not in k and "secs" not in k:
      assert a[k] == b[k], (k, a[k], b[k])

  def losses(name):
    with open(tmp_path / name / "metrics.jsonl") as f:
      rows = [json.loads(line) for line in f]
    return {(k, r.get("step")): v for r in rows for k, v in r.items() if k.endswith("loss")}

  la, lb = losses("one"), losses("two")
  assert la.keys() == lb.keys() and len(la) > 10
  for k in la:
    assert abs(la[k] - lb[k]) <= 1e-4, (k, la[k], lb[k])


def _index_cmd(out, data, *extra):
  return [sys.executable, os.path.join("tests", "index_worker.py"), str(out), str(data), *extra]


@pytest.mark.multiprocess
def test_index_build_change_save_on_two_processes_equals_one(tmp_path):
  # Two processes encode the catalogue straight into a row-sharded exact index (each its
  # own rows), search it, add, delete, save and load it: every result and every saved
  # file must be what one process gets.
  data = tmp_path / "vocab"
  data.mkdir()
  tiny_model.tokenizer(data)  # Writes the vocabulary the workers load.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  # The one-process reference runs beside the two processes: the test waits once.
  one = subprocess.Popen(_index_cmd(tmp_path / "one", data), cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _run_two(tmp_path, "two", data, _index_cmd)
  log = one.communicate(timeout=600)[0]
  assert one.returncode == 0, log[-3000:]

  def result(name, p=0):
    with open(tmp_path / name / f"result-{p}.json") as f:
      return json.load(f)
  a, b, b1 = result("one"), result("two"), result("two", 1)
  assert (a["process_count"], b["process_count"], b["devices"]) == (1, 2, 4)
  # Each process held its own half of the encoded rows, never the whole catalogue.
  assert b["held"] == b1["held"] == b["rows"] // 2 and b["rows"] >= index_worker.N
  assert a["count"] == b["count"] == index_worker.N + 2 - 3
  for key in ("built", "built_worlds", "changed", "loaded"):
    assert a[key]["ids"] == b[key]["ids"], key
    np.testing.assert_allclose(a[key]["scores"], b[key]["scores"], rtol=1e-5, atol=1e-5)
  ix_a, ix_b = tmp_path / "one" / "ix", tmp_path / "two" / "ix"
  assert (ix_a / "entities.jsonl").read_text() == (ix_b / "entities.jsonl").read_text()
  np.testing.assert_allclose(np.load(ix_a / "vectors.npy"), np.load(ix_b / "vectors.npy"),
                             atol=1e-5)
  ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (ix_a, ix_b))
  assert {k: v for k, v in ma.items() if k != "files"} == {
      k: v for k, v in mb.items() if k != "files"}
