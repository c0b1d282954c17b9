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


# ------------------------------------------------------------------------- plain text, pipes
def test_text_lines_are_records_with_their_line_numbers(tmp_path, caplog):
  inp = tmp_path / "in.txt"
  # CRLF and LF endings, a blank line, a bad byte, spaces kept, no newline at the end.
  inp.write_bytes(b"first text\r\n\n  second, indented \n\xff bad\nlast one")
  out = tmp_path / "out.jsonl"
  with caplog.at_level(logging.WARNING):
    stats = link_io.stream(inp, out, FakeLinker(), input_format="text", progress=False)
  assert read_out(out) == [
      {"line": 1, "text": "first text", "entities": [{"words": 2}]},
      {"line": 3, "text": "  second, indented ", "entities": [{"words": 2}]},
      {"line": 5, "text": "last one", "entities": [{"words": 2}]}]
  assert stats.linked == 3 and stats.reasons == {"invalid_utf8": 1}
  assert f"{inp}:4: invalid UTF-8 at byte 0 (invalid_utf8); line skipped" in caplog.text
  # A line of text that happens to be JSON is still text.
  inp.write_text('{"text": "x"}\n')
  link_io.stream(inp, out, FakeLinker(), input_format="text", progress=False)
  assert read_out(out)[0]["text"] == '{"text": "x"}'


def test_changing_the_input_format_starts_over(tmp_path):
  inp, _ = interrupted_input(tmp_path)
  out = tmp_path / "out.jsonl"
  interrupt(inp, out)
  fake = FakeLinker()
  stats = link_io.stream(inp, out, fake, batch_size=3, input_format="text", progress=False)
  # As text, every line with valid UTF-8 is a record, the jsonl's bad ones included.
  assert stats.resumed_from_line == 0 and fake.seen == 13 and stats.skipped == 1


class _Spy:
  """Wraps progress.progress to keep each bar it makes."""

  def __init__(self, real):
    self.real, self.bars = real, []

  def __call__(self, *args, **kwargs):
    bar = self.real(*args, **kwargs)
    self.bars.append((args, kwargs, bar))
    return bar


def test_progress_counts_texts_across_a_resume(tmp_path, monkeypatch):
  spy = _Spy(link_io.progress_lib.progress)
  monkeypatch.setattr(link_io.progress_lib, "progress", spy)
  inp, _ = interrupted_input(tmp_path)  # 11 good and 3 bad lines: 14 texts.
  out = tmp_path / "out.jsonl"
  with pytest.raises(KeyboardInterrupt):
    link_io.stream(inp, out, FakeLinker(raise_on_call=3), batch_size=3)
  (args, kwargs, bar), = spy.bars
  assert (args[0], kwargs["unit"], kwargs["initial"]) == (14, "text", 0)
  assert bar.n == 7  # 2 batches of 3 and the bad line between them.
  link_io.stream(inp, out, FakeLinker(), batch_size=3)
  args, kwargs, bar = spy.bars[1]
  assert (args[0], kwargs["initial"], bar.n) == (14, 7, 14)
  assert link_io.count_texts(inp) == 14


def test_pipe_links_a_batch_at_a_time_and_flushes_each(tmp_path, caplog):
  import io

  class Sink(io.BytesIO):
    def __init__(self):
      super().__init__()
      self.flushed: list[int] = []

    def flush(self):
      self.flushed.append(len(self.getvalue()))

  source = io.BytesIO(b"one\n\ntwo words\n\xfe\nthree little words\nfour\n")
  sink = Sink()
  with caplog.at_level(logging.WARNING):
    stats = link_io.stream_pipe(source, sink, FakeLinker(), batch_size=2)
  lines = [json.loads(x) for x in sink.getvalue().splitlines()]
  assert [(x["line"], x["entities"][0]["words"]) for x in lines] == [(1, 1), (3, 2), (5, 3),
                                                                      (6, 1)]
  assert sink.flushed == [len(b"".join(sink.getvalue().splitlines(True)[:n])) for n in (2, 4)]
  assert "<stdin>:4: invalid UTF-8" in caplog.text
  assert (stats.linked, stats.skipped) == (4, 1)
  jsonl_in = io.BytesIO(b'{"id": 3, "text": "a b"}\n')
  sink = Sink()
  link_io.stream_pipe(jsonl_in, sink, FakeLinker(), input_format="jsonl")
  assert json.loads(sink.getvalue()) == {"id": 3, "text": "a b", "entities": [{"words": 2}]}


def test_replaced_when_done_only_on_success(tmp_path):
  out = tmp_path / "out.jsonl"
  out.write_bytes(b"old\n")
  Path(f"{out}.partial").write_bytes(b"a resumable run's\n")
  with pytest.raises(RuntimeError):
    with link_io.replaced_when_done(out) as f:
      f.write(b"half")
      raise RuntimeError
  assert out.read_bytes() == b"old\n"
  assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.jsonl.partial"]  # No temp file.
  with link_io.replaced_when_done(out) as f:
    f.write(b"new\n")
  assert out.read_bytes() == b"new\n"
  assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.jsonl.partial"]
  assert Path(f"{out}.partial").read_bytes() == b"a resumable run's\n"
