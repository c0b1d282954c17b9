"""The command lines' shared behaviour: quiet library logs, one-line errors, --debug."""

import logging
import os
import subprocess
import sys

import pytest

from blink_jax import cli
from blink_jax.data.jsonl import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(name: str, level: int, message: str, pathname: str = "/x/y.py"):
  return logging.LogRecord(name, level, pathname, 1, message, None, None)


@pytest.mark.parametrize("record, kept", [
    # JAX probing a platform the machine lacks: noise.
    (_record("jax._src.xla_bridge", logging.INFO,
             "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"), False),
    # The rest of JAX's INFO lines, and anything at WARNING, stay.
    (_record("jax._src.xla_bridge", logging.INFO, "Using backend cpu"), True),
    (_record("jax._src.xla_bridge", logging.WARNING,
             "Unable to initialize backend 'cuda': it was asked for"), True),
    # Orbax's per-checkpoint detail goes; its warnings stay.
    (_record("absl", logging.INFO, "Restoring checkpoint from /w/6.",
             "/venv/site-packages/orbax/checkpoint/checkpointer.py"), False),
    (_record("absl", logging.WARNING, "Checkpoint directory is missing.",
             "/venv/site-packages/orbax/checkpoint/checkpointer.py"), True),
    (_record("blink_jax.link_io", logging.INFO, "in.jsonl: 3 records linked"), True),
])
def test_quiet_libraries_keep_what_a_user_needs(record, kept):
  assert cli._QuietLibraries().filter(record) is kept


def test_user_errors_are_told_from_bugs():
  assert cli.is_user_error(cli.UserError("x"))
  assert cli.is_user_error(FileNotFoundError("x"))
  assert cli.is_user_error(DataError("k.jsonl:3: duplicate entity id 5"))
  assert not cli.is_user_error(RuntimeError("a bug"))
  assert not cli.is_user_error(KeyError("a bug"))
  assert cli.one_line(OSError("Failed loading\n  Attempted:\n    x.py")) == (
      "Failed loading Attempted: x.py")


_PROGRAM = """
import sys
from blink_jax import cli
def main(argv):
  kind = argv[1]
  if kind == "user":
    raise cli.UserError("--input=x.txt: no such file")
  if kind == "data":
    from blink_jax.data.jsonl import DataError
    raise DataError("kb.jsonl:3: duplicate entity id 5")
  if kind == "bug":
    raise RuntimeError("a bug")
  if kind == "interrupt":
    raise KeyboardInterrupt
cli.run(main)
"""


def _run(*args):
  return subprocess.run([sys.executable, "-c", _PROGRAM, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_a_user_error_is_one_line_and_debug_shows_the_traceback():
  out = _run("user")
  assert out.returncode == 1 and out.stderr == "error: --input=x.txt: no such file\n"
  out = _run("data")
  assert out.returncode == 1 and out.stderr == (
      "error: kb.jsonl:3: duplicate entity id 5 (--debug shows the traceback)\n")
  out = _run("data", "--debug")
  assert out.returncode == 1 and "Traceback" in out.stderr
  assert out.stderr.rstrip().endswith("DataError: kb.jsonl:3: duplicate entity id 5")


def test_a_bug_keeps_its_traceback_and_ctrl_c_is_one_line():
  out = _run("bug")
  assert out.returncode == 1 and "Traceback" in out.stderr and "RuntimeError: a bug" in out.stderr
  out = _run("interrupt")
  assert out.returncode == 130 and out.stderr == "error: interrupted\n"


_FLAGS_PROGRAM = """
from absl import flags
from ml_collections import config_flags
from blink_jax import cli
config_flags.DEFINE_config_file("config", None, "", lock_config=True)
flags.DEFINE_integer("batch_size", 1, "", lower_bound=1)
cli.run(lambda argv: print("ran"))
"""


@pytest.mark.parametrize("args, line", [
    (["--batch_size=0"], "error: flag --batch_size=0: 0 is not a positive integer\n"),
    (["--nosuch=1"], "error: Unknown command line flag 'nosuch'\n"),
    # A misspelt config override: ml_collections raises three chained exceptions.
    (["--config.train.num_step=5"], 'error: no such config field \'num_step\'. Did you mean '
     '"num_steps" instead of "num_step"?\n'),
    (["--config.nosuch=1"], "error: no such config field 'nosuch'\n"),
])
def test_a_flag_that_does_not_parse_is_one_line(args, line):
  args = ["--config=configs/demo.py:runlocal", *args]
  out = subprocess.run([sys.executable, "-c", _FLAGS_PROGRAM, *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert (out.returncode, out.stdout, out.stderr) == (1, "", line)
  out = subprocess.run([sys.executable, "-c", _FLAGS_PROGRAM, *args, "--debug"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" in out.stderr
