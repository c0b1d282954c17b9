"""The link command line before any model: argument checks and the console script.

Each mistake must be reported in one line, before the model loads. The workdir here has no
trained linker at all: had the model been loaded first, the error would be about that.
Linking with a trained model is tested in test_linker.py.
"""

import os
import runpy
import subprocess
import sys

import pytest
import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _link(*args, stdin: str = ""):
  return subprocess.run([sys.executable, "-m", "blink_jax.link", *args], cwd=REPO,
                        input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture
def paths(tmp_path):
  work = tmp_path / "work"
  work.mkdir()  # A workdir without a linker.
  src = tmp_path / "in.jsonl"
  src.write_text('{"text": "Gegwe was seen."}\n')
  return work, src


@pytest.mark.parametrize("args, error", [
    (["--input={tmp}/nope.jsonl"], "error: --input={tmp}/nope.jsonl: no such file"),
    (["--input={tmp}"], "error: --input={tmp}: not a file"),
    (["--input={src}", "--output={src}"],
     "error: --output={src} is the input file: linking would overwrite it"),
    # The same file by another path.
    (["--input={src}", "--output={tmp}/../{tmpname}/in.jsonl"],
     "error: --output={tmp}/../{tmpname}/in.jsonl is the input file: linking would overwrite it"),
    (["--input={src}", "--output={tmp}"], "error: --output={tmp}: is a directory"),
    (["--input={src}", "--output=-"], "error: --output=-: leave --output out to write to stdout"),
    (["--input={src}", "--entities={tmp}/kb.jsonl"],
     "error: --entities={tmp}/kb.jsonl: no such file"),
    (["--input={src}", "--evaluate"],
     "error: --evaluate needs jsonl input with gold \"mentions\" and an --output file to score"),
    (["--output={tmp}/o.jsonl", "--evaluate"],  # stdin: plain text, which has no gold.
     "error: --evaluate needs jsonl input with gold \"mentions\" and an --output file to score"),
    (["--use_worlds"], "error: --use_worlds needs jsonl input whose lines carry a \"world\""),
])
def test_mistakes_are_one_line_before_the_model_loads(paths, tmp_path, args, error):
  work, src = paths
  fill = lambda s: s.format(tmp=tmp_path, src=src, tmpname=tmp_path.name)
  out = _link(f"--workdir={work}", *map(fill, args))
  assert out.returncode == 1
  assert out.stderr == fill(error) + "\n"  # Nothing else: no traceback, no log.
  assert src.read_text() == '{"text": "Gegwe was seen."}\n'


def test_bad_flag_values_fail_at_parsing(paths):
  work, src = paths
  for flag, line in (("--batch_size=0", "flag --batch_size=0: 0 is not a positive integer"),
                     ("--mode=fastest", "flag --mode=fastest: value should be one of"),
                     ("--input_format=csv", "flag --input_format=csv: value should be one of")):
    out = _link(f"--workdir={work}", f"--input={src}", flag)
    assert out.returncode == 1 and out.stdout == "", flag
    assert out.stderr.startswith(f"error: {line}") and out.stderr.count("\n") == 1, out.stderr


def test_a_workdir_without_a_linker_is_one_line(paths, tmp_path):
  work, src = paths
  out = _link(f"--workdir={tmp_path / 'nowhere'}", f"--input={src}")
  assert out.stderr == f"error: --workdir={tmp_path / 'nowhere'}: no such directory\n"
  out = _link(f"--workdir={work}", stdin="Gegwe was seen.\n")
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert out.stderr.splitlines()[-1].startswith(f"error: No linker in {work}")
  assert "--config.mode=train_linker" in out.stderr


def test_setup_declares_the_console_script_and_it_runs(monkeypatch, tmp_path):
  declared = {}
  monkeypatch.setattr(setuptools, "setup", lambda **kwargs: declared.update(kwargs))
  monkeypatch.chdir(REPO)
  runpy.run_path(os.path.join(REPO, "setup.py"))
  scripts = dict(line.replace(" ", "").split("=")
                 for line in declared["entry_points"]["console_scripts"])
  module, function = scripts["blink-jax-link"].split(":")
  # What pip's generated script does: import the module, call the function with argv.
  code = (f"import sys, {module}; sys.argv = ['blink-jax-link'] + sys.argv[1:]; "
          f"sys.exit({module}.{function}())")
  out = subprocess.run([sys.executable, "-c", code, f"--workdir={tmp_path}",
                        f"--input={tmp_path / 'x.txt'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr == f"error: --input={tmp_path / 'x.txt'}: no such file\n"
  # Its --help shows the usage and the flags, as `python -m blink_jax.link --help` does.
  out = subprocess.run([sys.executable, "-c", code, "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.stdout.startswith("Link texts with a trained linker")
  assert "--batch_size" in out.stdout and "--workdir" in out.stdout


def test_the_modes_spelled_out_are_the_linkers():
  # link.py names the modes without importing the linker (and JAX); they must agree.
  code = ("from blink_jax import link; from blink_jax.inference import linker; "
          "assert link.MODES == linker.MODES, (link.MODES, linker.MODES)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
