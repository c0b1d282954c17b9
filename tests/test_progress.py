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
  with progress.progress(10, desc="train", stream=tty, delay=0) as bar:
    bar.update(10)
  assert "\r" in tty.getvalue() and "10/10" in tty.getvalue()  # tqdm's bar.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  for stream in (_Terminal(), io.StringIO()):
    with progress.progress(10, desc="train", stream=stream, delay=0) as bar:
      bar.update(10)
    assert stream.getvalue() == ""


def test_short_nested_loops_leave_a_terminal_alone():
  # The linker encodes each batch of texts in a loop nested in the linking loop. A nested
  # bar, drawn and erased, costs a terminal a line (and shows a blank one where cursor
  # moves are ignored): loops shorter than `delay` must write nothing at all.
  tty = _Terminal()
  with progress.progress(6, desc="linking", stream=tty, delay=0) as outer:
    for _ in range(3):
      for _ in progress.bar(range(2), desc="mentions", unit="batch", stream=tty):
        pass
      outer.update(2)
  text = tty.getvalue()
  assert "linking" in text and "6/6" in text
  assert "mentions" not in text and "\x1b[A" not in text  # No nested bar, no cursor moves.


def test_a_dumb_terminal_gets_lines(monkeypatch):
  monkeypatch.setenv("TERM", "dumb")  # Emacs' shell: a TTY that ignores cursor moves.
  tty = _Terminal()
  with progress.progress(10, desc="train", stream=tty, delay=0) as bar:
    bar.update(10)
  assert "\r" not in tty.getvalue() and "train: 10/10 (100%)" in tty.getvalue()


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
