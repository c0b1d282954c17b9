"""Streaming, resumable linking: texts in, the same records with entities out.

Input, one record per line, in one of two formats:
* "jsonl": a JSON object with a string field (default "text"); other keys (e.g. "id") are kept;
* "text": the line itself is the text; its record is {"line": line number, "text": the line
  without its line break}.
Output: the record plus "entities": the linker's result for that record (any JSON value,
e.g. a list of spans; an input "entities" key is replaced), one jsonl line per good input
line, in input order. A bad input line (invalid UTF-8; in jsonl also not JSON, not an object,
text field missing or not a string) is logged as a warning naming path:lineno, counted by
reason (the reasons of jsonl.decode_line) and skipped; blank lines are skipped silently.

`stream` reads a file and writes a file, with the guarantees below; `stream_pipe` reads and
writes open streams (stdin, stdout), a batch at a time and without resume.

Guarantees:

* Constant memory: the input is read line by line in binary and linked in batches.
* `output_path` only ever holds a complete output. Lines go to `output_path + ".partial"`;
  after each batch is flushed and fsynced, a small JSON state, `output_path + ".progress"`,
  is replaced atomically: the input lines and bytes consumed, the output bytes written, the
  input's size and mtime (its fingerprint), its format and text field, the caller's settings
  (which linker made the lines) and the counts so far. At the end the partial file is
  renamed onto `output_path` and the state is deleted.
* Resume: a run that finds a state and a partial file for the same input (same fingerprint,
  format and text field) cuts the partial file back to the recorded size, which drops a
  half-written tail, seeks the input to the recorded offset and goes on; the records of
  finished batches are not linked again. Anything else (no state, an unreadable state, a
  changed input, a partial file shorter than recorded) starts over, with a log line saying
  why.
* A gs:// output (see storage.py) keeps these guarantees, though GCS objects cannot be
  appended to or renamed: there `.partial` is a prefix holding one object per batch, named
  by the output byte offset where it starts (each one upload, atomic), the state is one
  object, and at the end the batches are concatenated into `output_path` in one upload
  (constant memory: a batch at a time). Resume keeps the batches before the recorded size.
  A gs:// input is read the same way as a local one (in binary, with seeks).
* An existing complete `output_path` is not a reason to skip work: a new run links everything
  again and replaces it at the end (until then the old file stays as it was).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable

from blink_jax import progress as progress_lib
from blink_jax import storage
# _field is jsonl's field check: reusing it keeps the reasons ("missing_field", "bad_field")
# and messages the same as every other reader's.
from blink_jax.data.jsonl import (LineError, PathLike, _field, decode_line, decode_utf8,
                                  skip_line)

log = logging.getLogger(__name__)

LinkBatch = Callable[[list[dict]], list[Any]]
ParseLine = Callable[[bytes, int], "dict | None"]
FORMATS = ("jsonl", "text")
_STATE_VERSION = 1


@dataclasses.dataclass
class StreamStats:
  """Counts over the whole input, including the part done by an interrupted earlier run."""

  linked: int = 0
  skipped: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  resumed_from_line: int = 0  # Input lines an earlier run had consumed; 0 for a fresh start.


def parser(input_format: str, text_field: str = "text") -> ParseLine:
  """`parse(raw line, line number)`: the line's record, None for a blank line, or LineError."""
  if input_format not in FORMATS:
    raise ValueError(f"input format must be one of {FORMATS}, got {input_format!r}")

  def parse_jsonl(raw: bytes, lineno: int) -> dict | None:
    del lineno  # A jsonl record carries its own keys (e.g. "id").
    obj = decode_line(raw)
    if obj is not None:
      _field(obj, text_field, str)
    return obj

  def parse_text(raw: bytes, lineno: int) -> dict | None:
    # Only the line break goes: other white space is part of the text its offsets index.
    text = decode_utf8(raw).rstrip("\r\n")
    # The line number lets a reader line the output up with an input that had blank lines.
    return {"line": lineno, text_field: text} if text.strip() else None

  return parse_jsonl if input_format == "jsonl" else parse_text


def iter_input(path: PathLike, *, text_field: str = "text", input_format: str = "jsonl",
               offset: int = 0, lineno: int = 0,
               stats: StreamStats | None = None) -> Iterator[tuple[dict, int, int]]:
  """Yields (record, line number, byte offset after the line) for each good line of `path`.

  Reading starts at byte `offset`, which is line `lineno` + 1. Bad lines are logged, counted
  in `stats` and skipped. A generator: one line in memory at a time.
  """
  with storage.open(path, "rb") as f:
    f.seek(offset)
    for obj, lineno, offset in _lines(f, path, parser(input_format, text_field), offset,
                                      lineno, stats):
      if obj is not None:
        yield obj, lineno, offset


def _lines(f: BinaryIO, name: PathLike, parse: ParseLine, offset: int, lineno: int,
           stats: StreamStats | None) -> Iterator[tuple[dict | None, int, int]]:
  """Like iter_input over the open binary `f` (at `offset`), but yields every line, with None
  for a blank or bad one, so that the caller always knows how far the input has been
  consumed. Binary: exact offsets, and a bad byte keeps its line number."""
  stats = stats if stats is not None else StreamStats()
  for lineno, raw in enumerate(f, start=lineno + 1):
    offset += len(raw)
    try:
      obj = parse(raw, lineno)
    except LineError as e:
      skip_line(stats, name, lineno, e)
      obj = None
    yield obj, lineno, offset


def count_texts(path: PathLike) -> int:
  """The lines of `path` that are not blank: the texts (good or bad) a run will go through."""
  with storage.open(path, "rb") as f:
    # bytes.strip() removes less than str.strip(), so this never counts fewer texts than
    # the readers find; a line of only non-ASCII spaces is the one it counts and they skip.
    return sum(1 for raw in f if raw.strip())


def _fingerprint(path: PathLike, input_format: str, text_field: str,
                 settings: Any) -> dict[str, Any]:
  size, mtime_ns = storage.getsize_and_mtime(path)
  # Through JSON, so that it compares equal to the copy read back from the state.
  return {"input_size": size, "input_mtime_ns": mtime_ns,
          "input_format": input_format, "text_field": text_field,
          "settings": json.loads(json.dumps(settings, sort_keys=True))}


def _save_state(path: str, state: dict[str, Any]) -> None:
  # Locally fsynced before the rename: the state must never claim output bytes the disk may
  # not have (storage.atomic_write).
  storage.atomic_write_text(path, json.dumps(state, sort_keys=True))


def _load_state(path: str) -> dict[str, Any] | None:
  try:
    state = storage.read_json(path)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    log.warning("%s: unreadable resume state (%s); starting over", path, e)
    return None
  return state if isinstance(state, dict) else None


class _LocalPartial:
  """The partial output as one local file, appended to and fsynced a batch at a time."""

  def __init__(self, path: str):
    self.path = path
    self._file: BinaryIO | None = None

  def exists(self) -> bool:
    return os.path.exists(self.path)

  def size(self, recorded: int) -> int:
    del recorded
    return os.path.getsize(self.path)

  def open(self, out_bytes: int, resume: bool) -> None:
    self._file = open(self.path, "r+b" if resume else "wb")  # pylint: disable=consider-using-with
    self._file.truncate(out_bytes)  # Drops a tail written after the last saved state.
    self._file.seek(out_bytes)

  def write(self, data: bytes, start: int) -> None:
    """Appends one batch, durably."""
    del start
    self._file.write(data)
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self._file.close()

  def finish(self, output_path: str, out_bytes: int) -> None:
    del out_bytes
    os.replace(self.path, output_path)


class _RemotePartial:
  """The partial output on GCS: one object per batch under `path`/, named by its start."""

  def __init__(self, path: str):
    self.path = path

  def _parts(self) -> list[tuple[int, str]]:
    if not storage.isdir(self.path):
      return []
    return sorted((int(n), os.path.join(self.path, n)) for n in storage.listdir(self.path)
                  if n.isdigit())

  def exists(self) -> bool:
    return bool(self._parts())

  def size(self, recorded: int) -> int:
    """The bytes of the unbroken run of batches from 0 that the state recorded."""
    end = 0
    for start, part in self._parts():
      if start >= recorded or start != end:
        break
      end += storage.size(part)
    return end

  def open(self, out_bytes: int, resume: bool) -> None:
    for start, part in self._parts():
      if not resume or start >= out_bytes:  # Batches after the last saved state.
        storage.remove(part)

  def write(self, data: bytes, start: int) -> None:
    storage.atomic_write(os.path.join(self.path, f"{start:016d}"), data)

  def close(self) -> None:
    pass

  def finish(self, output_path: str, out_bytes: int) -> None:
    # One upload, visible whole when it is finished; a batch in memory at a time.
    with storage.writer(output_path) as out:
      for start, part in self._parts():
        if start < out_bytes:
          out.write(storage.read_bytes(part))
    storage.rmtree(self.path)


def _partial(output_path: str) -> _LocalPartial | _RemotePartial:
  partial = output_path + ".partial"
  return _RemotePartial(partial) if storage.is_remote(partial) else _LocalPartial(partial)


def _resumable(state: dict[str, Any] | None, partial: _LocalPartial | _RemotePartial,
               fingerprint: dict[str, Any]) -> str | None:
  """None when the partial output can be continued, else why not (for the log)."""
  if state is None or not partial.exists():
    return "no earlier run to resume" if state is None else "no partial output"
  if state.get("version") != _STATE_VERSION:
    return f"state version {state.get('version')!r} != {_STATE_VERSION}"
  if {k: state.get(k) for k in fingerprint} != fingerprint:
    return ("the input (size, mtime, format or text field) or the linker's settings changed "
            "since the earlier run")
  if partial.size(state["output_bytes"]) < state["output_bytes"]:
    return "the partial output is shorter than recorded"
  return None


def stream(input_path: PathLike, output_path: PathLike, link_batch: LinkBatch, *,
           batch_size: int = 64, text_field: str = "text", input_format: str = "jsonl",
           progress: bool = True, settings: Any = None) -> StreamStats:
  """Links every record of `input_path` into `output_path`, resuming if it can.

  `link_batch` gets up to `batch_size` input objects and returns one JSON-serializable result
  per object, stored under "entities". `settings` (JSON-serializable: the model, mode, ...)
  must equal the interrupted run's for it to be resumed. See the module docstring for the
  formats, what is skipped, and the resume rules. Returns the counts over the whole input.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  parse = parser(input_format, text_field)
  output_path = os.fspath(output_path)
  partial, state_path = _partial(output_path), output_path + ".progress"
  fingerprint = _fingerprint(input_path, input_format, text_field, settings)
  state = _load_state(state_path)
  why_not = _resumable(state, partial, fingerprint)
  stats = StreamStats()
  if why_not is None:
    stats.linked, stats.resumed_from_line = state["linked"], state["lines"]
    stats.reasons.update(state["reasons"])
    stats.skipped = sum(stats.reasons.values())
    offset, lines, out_bytes = state["input_offset"], state["lines"], state["output_bytes"]
    log.info("%s: resuming at input line %d (%d records linked)", output_path, lines + 1,
             stats.linked)
  else:
    if state is not None or partial.exists():
      log.info("%s: starting over: %s", output_path, why_not)
    # The old state goes first: it must never be paired with the new partial file.
    storage.remove(state_path)
    offset = lines = out_bytes = 0
  storage.makedirs(os.path.dirname(storage.abspath(output_path)))

  def save(offset: int, lines: int, out_bytes: int) -> None:
    _save_state(state_path, {**fingerprint, "version": _STATE_VERSION, "input_offset": offset,
                             "lines": lines, "output_bytes": out_bytes, "linked": stats.linked,
                             "reasons": dict(stats.reasons)})

  # The bar counts texts, a bad one included: every non-blank line is one.
  total = count_texts(input_path) if progress else 0
  bar = progress_lib.progress(total, initial=stats.linked + stats.skipped, desc="linking",
                              unit="text", disable=not progress)
  partial.open(out_bytes, resume=why_not is None)
  with storage.open(input_path, "rb") as source, contextlib.closing(partial), bar:
    source.seek(offset)
    if why_not is not None:
      save(offset, lines, out_bytes)
    # Each batch comes right after its last line is read, so the state saved after it
    # describes exactly the lines read so far: its counts and its position agree.
    for batch, lines, offset in _batches(
        _lines(source, input_path, parse, offset, lines, stats), batch_size):
      data = _encode_batch(batch, link_batch)
      partial.write(data, out_bytes)
      out_bytes += len(data)
      stats.linked += len(batch)
      save(offset, lines, out_bytes)
      bar.update(stats.linked + stats.skipped - bar.n)
    bar.update(max(bar.total - bar.n, 0))  # Trailing bad lines, lines of only odd spaces.
  partial.finish(output_path, out_bytes)
  storage.remove(state_path)
  _log_done(output_path, stats)
  return stats


def stream_pipe(source: BinaryIO, sink: BinaryIO, link_batch: LinkBatch, *,
                name: str = "<stdin>", batch_size: int = 64, text_field: str = "text",
                input_format: str = "text") -> StreamStats:
  """Links the lines of the open binary stream `source` into `sink`, a batch at a time.

  For pipes (stdin, stdout): no resume, since a pipe cannot be read again, and each batch is
  flushed as soon as it is linked, so that a reader downstream sees results while the input
  still arrives. `name` stands for the source in warnings ("<stdin>:3: ..."). Formats and
  skipping are as for `stream`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  stats = StreamStats()
  parse = parser(input_format, text_field)
  for batch, _, _ in _batches(_lines(source, name, parse, 0, 0, stats), batch_size):
    sink.write(_encode_batch(batch, link_batch))
    sink.flush()
    stats.linked += len(batch)
  _log_done(name, stats)
  return stats


@contextlib.contextmanager
def replaced_when_done(path: PathLike) -> Iterator[BinaryIO]:
  """A binary file that becomes `path` when the block ends without an error.

  For output that cannot be resumed (from a pipe): `path` only ever holds a complete output,
  and its `.partial` and `.progress` files, which a resumable run may own, are left alone.
  (storage.writer: a local temporary file renamed, or a gs:// upload abandoned on an error.)
  """
  path = os.fspath(path)
  if not storage.is_remote(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with storage.writer(path) as f:
    yield f


def _batches(lines: Iterator[tuple[dict | None, int, int]],
             batch_size: int) -> Iterator[tuple[list[dict], int, int]]:
  """Good records in batches of `batch_size` (the last may be smaller), each with the line
  number and byte offset of the last line read."""
  batch: list[dict] = []
  lineno = offset = 0
  for obj, lineno, offset in lines:
    if obj is None:
      continue
    batch.append(obj)
    if len(batch) == batch_size:
      yield batch, lineno, offset
      batch = []
  if batch:
    yield batch, lineno, offset


def _log_done(output: str, stats: StreamStats) -> None:
  log.info("%s written: %d record%s linked, %d bad line%s skipped%s", output, stats.linked,
           "" if stats.linked == 1 else "s", stats.skipped, "" if stats.skipped == 1 else "s",
           f" ({dict(sorted(stats.reasons.items()))})" if stats.skipped else "")


def _encode_batch(batch: list[dict], link_batch: LinkBatch) -> bytes:
  """The output lines of one batch, linked."""
  results = link_batch(list(batch))
  if len(results) != len(batch):
    raise ValueError(f"link_batch returned {len(results)} results for {len(batch)} records")
  # Encoded in full before the first write, so a bad result leaves the output untouched.
  return b"".join(json.dumps({**obj, "entities": result}, ensure_ascii=False).encode("utf-8")
                  + b"\n" for obj, result in zip(batch, results))
