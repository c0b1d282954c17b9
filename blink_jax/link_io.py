"""Streaming, resumable jsonl linking: input documents in, the same documents with entities out.

Input: one JSON object per line with a string field (default "text"); other keys (e.g. "id")
are kept. Output: the input object plus "entities": the linker's result for that record (any
JSON value, e.g. a list of spans; an input "entities" key is replaced), one line per good
input line, in input order. A bad input line (invalid UTF-8, not JSON, not an object, text
field missing or not a string) is logged as a warning naming path:lineno, counted by reason
(the reasons of jsonl.decode_line) and skipped; blank lines are skipped silently.

Guarantees:

* Constant memory: the input is read line by line in binary and linked in batches.
* `output_path` only ever holds a complete output. Lines go to `output_path + ".partial"`;
  after each batch is flushed and fsynced, a small JSON state, `output_path + ".progress"`,
  is replaced atomically: the input lines and bytes consumed, the output bytes written, the
  input's size and mtime (its fingerprint), the text field, the caller's settings (which
  linker made the lines) and the counts so far. At the end
  the partial file is renamed onto `output_path` and the state is deleted.
* Resume: a run that finds a state and a partial file for the same input (same fingerprint and
  text field) cuts the partial file back to the recorded size, which drops a half-written tail,
  seeks the input to the recorded offset and goes on; the records of finished batches are not
  linked again. Anything else (no state, an unreadable state, a changed input, a partial file
  shorter than recorded) starts over, with a log line saying why.
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
from typing import Any, Callable

from blink_jax import progress as progress_lib
# _field is jsonl's field check: reusing it keeps the reasons ("missing_field", "bad_field")
# and messages the same as every other reader's.
from blink_jax.data.jsonl import LineError, PathLike, _field, decode_line

log = logging.getLogger(__name__)

LinkBatch = Callable[[list[dict]], list[Any]]
_STATE_VERSION = 1


@dataclasses.dataclass
class StreamStats:
  """Counts over the whole input, including the part done by an interrupted earlier run."""

  linked: int = 0
  skipped: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  resumed_from_line: int = 0  # Input lines an earlier run had consumed; 0 for a fresh start.


def iter_input(path: PathLike, *, text_field: str = "text", offset: int = 0, lineno: int = 0,
               stats: StreamStats | None = None) -> Iterator[tuple[dict, int, int]]:
  """Yields (record, line number, byte offset after the line) for each good line of `path`.

  Reading starts at byte `offset`, which is line `lineno` + 1. Bad lines are logged, counted
  in `stats` and skipped. A generator: one line in memory at a time.
  """
  for obj, lineno, offset in _lines(path, text_field, offset, lineno, stats):
    if obj is not None:
      yield obj, lineno, offset


def _lines(path: PathLike, text_field: str, offset: int, lineno: int,
           stats: StreamStats | None) -> Iterator[tuple[dict | None, int, int]]:
  """Like iter_input, but yields every line, with None for a blank or bad one, so that the
  caller always knows how far the input has been consumed."""
  stats = stats if stats is not None else StreamStats()
  with open(path, "rb") as f:  # Binary: exact offsets, and a bad byte keeps its line number.
    f.seek(offset)
    for lineno, raw in enumerate(f, start=lineno + 1):
      offset += len(raw)
      try:
        obj = decode_line(raw)
        if obj is not None:
          _field(obj, text_field, str)
      except LineError as e:
        log.warning("%s:%d: %s (%s); line skipped", path, lineno, e.what, e.reason)
        stats.skipped += 1
        stats.reasons[e.reason] += 1
        obj = None
      yield obj, lineno, offset


def _fingerprint(path: PathLike, text_field: str, settings: Any) -> dict[str, Any]:
  st = os.stat(path)
  # Through JSON, so that it compares equal to the copy read back from the state.
  return {"input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns, "text_field": text_field,
          "settings": json.loads(json.dumps(settings, sort_keys=True))}


def _save_state(path: str, state: dict[str, Any]) -> None:
  # fsync before the rename: the state must never claim output bytes the disk may not have.
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(state, f, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _load_state(path: str) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      state = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    log.warning("%s: unreadable resume state (%s); starting over", path, e)
    return None
  return state if isinstance(state, dict) else None


def _resumable(state: dict[str, Any] | None, partial: str,
               fingerprint: dict[str, Any]) -> str | None:
  """None when the partial output can be continued, else why not (for the log)."""
  if state is None or not os.path.exists(partial):
    return "no earlier run to resume" if state is None else "no partial output"
  if state.get("version") != _STATE_VERSION:
    return f"state version {state.get('version')!r} != {_STATE_VERSION}"
  if {k: state.get(k) for k in fingerprint} != fingerprint:
    return ("the input (size, mtime or text field) or the linker's settings changed since "
            "the earlier run")
  if os.path.getsize(partial) < state["output_bytes"]:
    return "the partial output is shorter than recorded"
  return None


def stream(input_path: PathLike, output_path: PathLike, link_batch: LinkBatch, *,
           batch_size: int = 64, text_field: str = "text", progress: bool = True,
           settings: Any = None) -> StreamStats:
  """Links every record of the jsonl `input_path` into `output_path`, resuming if it can.

  `link_batch` gets up to `batch_size` input objects and returns one JSON-serializable result
  per object, stored under "entities". `settings` (JSON-serializable: the model, mode, ...)
  must equal the interrupted run's for it to be resumed. See the module docstring for the
  formats, what is skipped, and the resume rules. Returns the counts over the whole input.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  output_path = os.fspath(output_path)
  partial, state_path = output_path + ".partial", output_path + ".progress"
  fingerprint = _fingerprint(input_path, text_field, settings)
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
    if state is not None or os.path.exists(partial):
      log.info("%s: starting over: %s", output_path, why_not)
    # The old state goes first: it must never be paired with the new partial file.
    if os.path.exists(state_path):
      os.unlink(state_path)
    offset = lines = out_bytes = 0
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)

  def save(offset: int, lines: int, out_bytes: int) -> None:
    _save_state(state_path, {**fingerprint, "version": _STATE_VERSION, "input_offset": offset,
                             "lines": lines, "output_bytes": out_bytes, "linked": stats.linked,
                             "reasons": dict(stats.reasons)})

  bar = progress_lib.progress(fingerprint["input_size"], initial=offset, desc="linking",
                             unit="B", unit_scale=True, disable=not progress)
  # closing(): an exception from link_batch must not leave the input open until GC.
  with (open(partial, "r+b" if why_not is None else "wb") as out, bar,
        contextlib.closing(_lines(input_path, text_field, offset, lines, stats)) as lines_iter):
    out.truncate(out_bytes)  # Drops a tail written after the last saved state.
    out.seek(out_bytes)
    if why_not is not None:
      save(offset, lines, out_bytes)
    batch: list[dict] = []
    done = False
    while not done:
      item = next(lines_iter, None)
      done = item is None
      if not done:
        obj, lines, offset = item
        if obj is None:
          continue
        batch.append(obj)
      # Saved right after a batch's last line (or at the end), the state's counts and
      # position describe exactly the same lines.
      if batch and (len(batch) == batch_size or done):
        out_bytes += _write_batch(out, batch, link_batch)
        stats.linked += len(batch)
        batch = []
        save(offset, lines, out_bytes)
        bar.update(offset - bar.n)
    bar.update(fingerprint["input_size"] - bar.n)  # Trailing blank or bad lines.
  os.replace(partial, output_path)
  os.unlink(state_path)
  log.info("%s: %d records linked, %d bad lines skipped%s", output_path, stats.linked,
           stats.skipped, f" ({dict(sorted(stats.reasons.items()))})" if stats.skipped else "")
  return stats


def _write_batch(out, batch: list[dict], link_batch: LinkBatch) -> int:
  """Links and appends one batch, durably; returns the bytes written."""
  results = link_batch(list(batch))
  if len(results) != len(batch):
    raise ValueError(f"link_batch returned {len(results)} results for {len(batch)} records")
  # Encoded in full before the first write, so a bad result leaves the file untouched.
  data = b"".join(json.dumps({**obj, "entities": result}, ensure_ascii=False).encode("utf-8")
                  + b"\n" for obj, result in zip(batch, results))
  out.write(data)
  out.flush()
  os.fsync(out.fileno())
  return len(data)
