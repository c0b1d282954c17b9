"""Progress: a bar on a terminal, plain newline-terminated lines in a log file."""

import io
import json
import os
import re
import subprocess
import sys
import types

import jax
import numpy as np

from blink_jax.inference import encode
from blink_jax import link_io
from blink_jax import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"train: (\d+)/120 \((\d+)%\)")


class _Terminal(io.StringIO):

  def isatty(self) -> bool:
    return True


def test_log_lines_when_not_a_terminal():
  out = io.StringIO()  # Not a TTY, as a log file.
  with progress.progress(120, desc="train", stream=out, delay=0) as bar:
    for step in range(120):
      bar.update(1)
      bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
  text = out.getvalue()
  assert "\r" not in text and text.endswith("\n")
  lines = text.splitlines()
  assert all(LINE.match(l) for l in lines), lines
  done = [int(LINE.match(l).group(1)) for l in lines]
  assert 10 <= len(lines) <= 12 and done == sorted(done) and done[-1] == 120, lines
  assert "loss=0.008" in lines[-1]


def test_short_loops_stay_quiet():
  # encode() runs per linked text; a loop shorter than `delay` logs nothing.
  out = io.StringIO()
  for _ in progress.bar(range(50), desc="encoding", stream=out):
    pass
  assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_and_other_processes_nothing(monkeypatch):
  tty = _Terminal()
  with progress.progress(10, desc="train", stream=tty) as bar:
    bar.update(10)
  assert "\r" in tty.getvalue() and "10/10" in tty.getvalue()  # tqdm's bar.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  for stream in (_Terminal(), io.StringIO()):
    with progress.progress(10, desc="train", stream=stream, delay=0) as bar:
      bar.update(10)
    assert stream.getvalue() == ""


def test_stderr_redirected_to_a_file_gets_lines(tmp_path):
  log = tmp_path / "log.txt"
  code = ("from blink_jax import progress\n"
          "for _ in progress.bar(range(40), desc='encoding', unit='batch', delay=0):\n"
          "  pass\n")
  with open(log, "w") as f:
    subprocess.run([sys.executable, "-c", code], cwd=REPO, stderr=f, check=True,
                   timeout=120)
  text = log.read_text()
  assert "\r" not in text and "encoding: 40/40 batch (100%)" in text, text


def test_call_sites_write_no_carriage_returns(tmp_path, capsys):
  # pytest's captured stderr is not a TTY, as a log file.
  tokenize = lambda rows: types.SimpleNamespace(ids=np.ones((len(rows), 4), np.int32),
                                                mask=np.ones((len(rows), 4), np.int32))
  emb = encode.encode(lambda ids, mask: ids * 1.0, tokenize, 40, batch_size=8)
  assert emb.shape == (40, 4)
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
  link_io.stream(inp, tmp_path / "out.jsonl", lambda batch: [[] for _ in batch])
  assert "\r" not in capsys.readouterr().err
