"""The streaming linking driver: order, bad lines, interruption and resume, constant memory."""

import json
import logging
import os
import types
from pathlib import Path

import pytest

from blink_jax import link_io


class FakeLinker:
  """link_batch stand-in: each record's word count; records its calls; may raise on one."""

  def __init__(self, raise_on_call: int | None = None):
    self.batches: list[list] = []
    self.raise_on_call = raise_on_call

  def __call__(self, records: list[dict]) -> list:
    if self.raise_on_call is not None and len(self.batches) + 1 == self.raise_on_call:
      raise KeyboardInterrupt
    self.batches.append([r.get("id") for r in records])
    return [[{"words": len(r["text"].split())}] for r in records]

  @property
  def seen(self) -> int:
    return sum(len(b) for b in self.batches)


def write_raw(path: Path, lines: list) -> Path:
  """bytes lines verbatim, anything else as JSON; each line ends with a newline."""
  with open(path, "wb") as f:
    for line in lines:
      f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")
  return path


def docs(n: int, start: int = 0) -> list[dict]:
  return [{"id": i, "text": "w " * (i % 5 + 1), "lang": "xx"} for i in range(start, start + n)]


def expected_lines(records: list[dict]) -> list[dict]:
  return [{**r, "entities": [{"words": len(r["text"].split())}]} for r in records]


def read_out(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_bytes().splitlines()]


def assert_finished(out: Path) -> None:
  assert out.exists()
  assert not Path(f"{out}.partial").exists() and not Path(f"{out}.progress").exists()


def test_output_keeps_input_order_and_extra_keys(tmp_path):
  records = docs(7) + [{"text": "ünïcode ✓ ok", "meta": {"a": [1]}, "entities": "old"}]
  inp = write_raw(tmp_path / "in.jsonl", records)
  out = tmp_path / "sub" / "out.jsonl"
  fake = FakeLinker()
  stats = link_io.stream(inp, out, fake, batch_size=3, progress=False)
  assert_finished(out)
  assert read_out(out) == expected_lines(records)  # An input "entities" key is replaced.
  assert "ünïcode ✓" in out.read_text(encoding="utf-8")  # UTF-8, not \u escapes.
  assert [len(b) for b in fake.batches] == [3, 3, 2]
  assert (stats.linked, stats.skipped, stats.resumed_from_line) == (8, 0, 0)


def test_bad_lines_are_logged_counted_and_skipped(tmp_path, caplog):
  good = docs(6)
  inp = write_raw(tmp_path / "in.jsonl", [
      good[0], b"\xff\xfe", good[1], b"not json", b"", b"   ", good[2], b"[1,2]", good[3],
      b'{"id":1}', good[4], b'{"id":2,"text":5}', good[5]])
  out = tmp_path / "out.jsonl"
  with caplog.at_level(logging.WARNING, logger="blink_jax.link_io"):
    stats = link_io.stream(inp, out, FakeLinker(), batch_size=2, progress=False)
  assert read_out(out) == expected_lines(good)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  for lineno, reason in [(2, "invalid_utf8"), (4, "not_json"), (8, "not_object"),
                         (10, "missing_field"), (12, "bad_field")]:
    assert any(w.startswith(f"{inp}:{lineno}: ") and reason in w for w in warnings), (
        lineno, warnings)
  assert len(warnings) == 5  # Blank lines (5, 6) are skipped silently.
  assert stats.linked == 6 and stats.skipped == 5
  assert stats.reasons == {"invalid_utf8": 1, "not_json": 1, "not_object": 1,
                           "missing_field": 1, "bad_field": 1}


def interrupted_input(tmp_path: Path) -> tuple[Path, list[dict]]:
  """11 good records with bad lines between them, so that counts must survive the resume."""
  good = docs(11)
  lines = good[:3] + [b"oops"] + good[3:8] + [b"[]"] + good[8:] + [b"\xff"]
  return write_raw(tmp_path / "in.jsonl", lines), good


def reference(tmp_path: Path, inp: Path) -> bytes:
  ref = tmp_path / "reference.jsonl"
  link_io.stream(inp, ref, FakeLinker(), batch_size=3, progress=False)
  return ref.read_bytes()


def interrupt(inp: Path, out: Path) -> None:
  """Runs until the 3rd batch raises: 2 batches (6 records, 7 input lines) are saved."""
  with pytest.raises(KeyboardInterrupt):
    link_io.stream(inp, out, FakeLinker(raise_on_call=3), batch_size=3, progress=False)
  assert not out.exists()
  assert Path(f"{out}.partial").exists()
  state = json.loads(Path(f"{out}.progress").read_text())
  assert (state["linked"], state["lines"], state["reasons"]) == (6, 7, {"not_json": 1})


def test_interrupted_run_resumes_to_identical_output(tmp_path):
  inp, good = interrupted_input(tmp_path)
  out = tmp_path / "out.jsonl"
  interrupt(inp, out)
  fake = FakeLinker()
  stats = link_io.stream(inp, out, fake, batch_size=3, progress=False)
  assert fake.seen == 5 and fake.batches[0] == [6, 7, 8]  # Only what was not yet linked.
  assert_finished(out)
  assert out.read_bytes() == reference(tmp_path, inp)
  assert read_out(out) == expected_lines(good)
  assert stats.resumed_from_line == 7
  assert stats.linked == 11 and stats.skipped == 3  # Counted once each, across both runs.
  assert stats.reasons == {"not_json": 1, "not_object": 1, "invalid_utf8": 1}


def test_half_written_tail_is_discarded_on_resume(tmp_path):
  inp, _ = interrupted_input(tmp_path)
  out = tmp_path / "out.jsonl"
  interrupt(inp, out)
  with open(f"{out}.partial", "ab") as f:  # A write cut short after the last state save;
    f.write(b'{"id": 6, "text": "' + b"w " * 5000)  # longer than the rest of the output.
  fake = FakeLinker()
  link_io.stream(inp, out, fake, batch_size=3, progress=False)
  assert fake.seen == 5
  assert out.read_bytes() == reference(tmp_path, inp)


def test_changed_input_starts_over(tmp_path, caplog):
  inp, _ = interrupted_input(tmp_path)
  out = tmp_path / "out.jsonl"
  interrupt(inp, out)
  new = docs(4, start=100)
  write_raw(inp, new)
  fake = FakeLinker()
  with caplog.at_level(logging.INFO, logger="blink_jax.link_io"):
    stats = link_io.stream(inp, out, fake, batch_size=3, progress=False)
  assert "starting over" in caplog.text and "changed" in caplog.text
  assert fake.seen == 4 and stats.resumed_from_line == 0
  assert read_out(out) == expected_lines(new)
  assert (stats.linked, stats.skipped) == (4, 0)


def test_partial_without_state_or_with_bad_state_starts_over(tmp_path):
  inp = write_raw(tmp_path / "in.jsonl", docs(5))
  out = tmp_path / "out.jsonl"
  Path(f"{out}.partial").write_bytes(b"garbage\n")
  link_io.stream(inp, out, FakeLinker(), batch_size=2, progress=False)
  assert read_out(out) == expected_lines(docs(5))
  Path(f"{out}.partial").write_bytes(b"garbage\n")
  Path(f"{out}.progress").write_text("{not json")
  fake = FakeLinker()
  link_io.stream(inp, out, fake, batch_size=2, progress=False)
  assert fake.seen == 5 and read_out(out) == expected_lines(docs(5))
  assert_finished(out)


def test_existing_complete_output_is_replaced(tmp_path):
  inp = write_raw(tmp_path / "in.jsonl", docs(3))
  out = tmp_path / "out.jsonl"
  out.write_text('{"stale": true}\n')
  fake = FakeLinker()
  link_io.stream(inp, out, fake, progress=True)  # Also runs the progress bar once.
  assert fake.seen == 3 and read_out(out) == expected_lines(docs(3))


def test_empty_input_gives_empty_output(tmp_path):
  inp = write_raw(tmp_path / "in.jsonl", [b"", b"{bad"])
  out = tmp_path / "out.jsonl"
  fake = FakeLinker()
  stats = link_io.stream(inp, out, fake, progress=False)
  assert out.read_bytes() == b"" and fake.batches == []
  assert stats.reasons == {"not_json": 1}


def test_wrong_number_of_results_is_an_error(tmp_path):
  inp = write_raw(tmp_path / "in.jsonl", docs(3))
  out = tmp_path / "out.jsonl"
  with pytest.raises(ValueError, match="2 results for 3 records"):
    link_io.stream(inp, out, lambda batch: [[], []], progress=False)
  assert not out.exists()


def test_large_input_streams_in_batches(tmp_path):
  n, batch_size = 20_000, 64
  inp = tmp_path / "in.jsonl"
  with open(inp, "w") as f:
    for i in range(n):
      f.write(json.dumps({"id": i, "text": f"doc {i}"}) + "\n")
  # The reader is lazy: one record read means one line consumed, not the file.
  reader = link_io.iter_input(inp)
  assert isinstance(reader, types.GeneratorType)
  first, lineno, offset = next(reader)
  assert (first["id"], lineno, offset) == (0, 1, len(b'{"id": 0, "text": "doc 0"}\n'))
  reader.close()
  fake = FakeLinker()
  stats = link_io.stream(inp, tmp_path / "out.jsonl", fake, batch_size=batch_size,
                         progress=False)
  sizes = [len(b) for b in fake.batches]
  assert sizes == [batch_size] * (n // batch_size) + [n % batch_size]
  assert [i for b in fake.batches for i in b] == list(range(n))
  assert stats.linked == n
  assert os.path.getsize(tmp_path / "out.jsonl") > os.path.getsize(inp)
