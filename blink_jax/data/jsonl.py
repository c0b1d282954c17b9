"""BLINK-format jsonl I/O shared by every stage: entity catalogues, mentions, documents.

Three line formats (extra keys such as "dataset" are accepted and ignored):

* entity:   {"id": int, "title": str, "text": str, "world"?: str}
* mention:  {"context_left": str, "mention": str, "context_right": str, "label_id": int,
             "world"?: str, "id"?: str|int, "label_title"?: str}; label_id -1 means NIL.
* document: {"id": str|int, "text": str, "world"?: str,
             "mentions": [{"start": int, "end": int, "label_id"?: int, "label_title"?: str,
                           "mention"?: str}]}  (character offsets, end exclusive; at least one
             of label_id / label_title).

Readers decode each line themselves so that invalid UTF-8 is reported with its line number.
A bad line raises `DataError("{path}:{lineno}: ...")`, or, with `skip_bad=True`, is skipped and
counted in a `ReadStats`, with a warning naming its file and line; one more warning line
summarises the skips of each file.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar, Union

import numpy as np

from blink_jax.data import records as records_lib

log = logging.getLogger(__name__)

NIL_ID = -1  # label_id of a mention whose gold entity is not in the catalogue.

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


class DataError(ValueError):
  """A malformed input line; the message starts with "{path}:{lineno}: ".

  `reason` is a short category (e.g. "not_json", "bad_field") used to count skipped lines.
  """

  def __init__(self, message: str, reason: str = "bad_record"):
    super().__init__(message)
    self.reason = reason


class LineError(Exception):
  """Raised by the per-line parsers; the reader adds the file and line to it."""

  def __init__(self, what: str, reason: str):
    super().__init__(what)
    self.what = what
    self.reason = reason


@dataclasses.dataclass
class ReadStats:
  """Counts of one or more reads: records returned, lines skipped, and why they were skipped."""

  read: int = 0
  skipped: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)


# ------------------------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class Entity:
  """One catalogue entry; `id` is the global integer label that mentions point to."""

  id: int
  title: str
  text: str
  world: str | None = None

  def to_json(self) -> dict[str, Any]:
    """The entity line format (world only when set)."""
    out: dict[str, Any] = {"id": self.id, "title": self.title, "text": self.text}
    if self.world is not None:
      out["world"] = self.world
    return out


@dataclasses.dataclass(frozen=True)
class Mention:
  """A mention in context; label_id == NIL_ID (-1) when the gold entity is not in the catalogue."""

  context_left: str
  mention: str
  context_right: str
  label_id: int
  world: str | None = None
  id: str | int | None = None
  label_title: str | None = None

  def to_json(self) -> dict[str, Any]:
    """The mention line format (optional keys only when set)."""
    out: dict[str, Any] = {}
    if self.id is not None:
      out["id"] = self.id
    out.update(context_left=self.context_left, mention=self.mention,
               context_right=self.context_right, label_id=self.label_id)
    if self.label_title is not None:
      out["label_title"] = self.label_title
    if self.world is not None:
      out["world"] = self.world
    return out


@dataclasses.dataclass(frozen=True)
class Span:
  """A gold mention inside a document: text[start:end] == mention (end exclusive)."""

  start: int
  end: int
  label_id: int | None
  label_title: str | None
  mention: str

  def to_json(self) -> dict[str, Any]:
    """The span format used inside a document line."""
    out: dict[str, Any] = {"start": self.start, "end": self.end, "mention": self.mention}
    if self.label_title is not None:
      out["label_title"] = self.label_title
    if self.label_id is not None:
      out["label_id"] = self.label_id
    return out


@dataclasses.dataclass(frozen=True)
class Document:
  """A whole text with its annotated spans, for end-to-end linking."""

  id: str | int
  text: str
  spans: tuple[Span, ...]
  world: str | None = None

  def to_json(self) -> dict[str, Any]:
    """The document line format; spans are written under "mentions"."""
    out: dict[str, Any] = {"id": self.id, "text": self.text,
                           "mentions": [s.to_json() for s in self.spans]}
    if self.world is not None:
      out["world"] = self.world
    return out


def to_json(record: Entity | Mention | Document | Span) -> dict[str, Any]:
  """The jsonl dict of any record type, so that write_jsonl -> read_* round trips."""
  return record.to_json()


# ------------------------------------------------------------------------- field validation


def _field(obj: dict, key: str, kind: type | tuple[type, ...], *, where: str = "",
           optional: bool = False) -> Any:
  """obj[key] checked against `kind`; bool is refused where int is expected."""
  if key not in obj or (optional and obj[key] is None):
    if optional:
      return None
    raise LineError(f"{where}missing field {key!r}", "missing_field")
  value = obj[key]
  kinds = kind if isinstance(kind, tuple) else (kind,)
  if isinstance(value, bool) or not isinstance(value, kinds):
    names = " or ".join(k.__name__ for k in kinds)
    raise LineError(f"{where}field {key!r} must be {names}, got {type(value).__name__} "
                     f"{value!r:.40}", "bad_field")
  return value


def _check_label(label_id: int, catalogue_ids: set[int] | None, where: str = "") -> None:
  if catalogue_ids is not None and label_id != NIL_ID and label_id not in catalogue_ids:
    raise LineError(f"{where}label_id {label_id} is not in the entity catalogue",
                     "label_not_in_catalogue")


def _parse_entity(obj: dict) -> Entity:
  eid = _field(obj, "id", int)
  if eid < 0:
    raise LineError(f"entity id must be >= 0, got {eid}", "bad_field")
  return Entity(id=eid, title=_field(obj, "title", str), text=_field(obj, "text", str),
                world=_field(obj, "world", str, optional=True))


def _parse_mention(obj: dict, catalogue_ids: set[int] | None) -> Mention:
  label_id = _field(obj, "label_id", int)
  _check_label(label_id, catalogue_ids)
  return Mention(
      context_left=_field(obj, "context_left", str),
      mention=_field(obj, "mention", str),
      context_right=_field(obj, "context_right", str),
      label_id=label_id,
      world=_field(obj, "world", str, optional=True),
      id=_field(obj, "id", (str, int), optional=True),
      label_title=_field(obj, "label_title", str, optional=True),
  )


def _parse_span(obj: Any, text: str, i: int, catalogue_ids: set[int] | None) -> Span:
  where = f"mentions[{i}]: "
  if not isinstance(obj, dict):
    raise LineError(f"{where}must be an object, got {type(obj).__name__}", "bad_field")
  start = _field(obj, "start", int, where=where)
  end = _field(obj, "end", int, where=where)
  label_id = _field(obj, "label_id", int, where=where, optional=True)
  label_title = _field(obj, "label_title", str, where=where, optional=True)
  mention = _field(obj, "mention", str, where=where, optional=True)
  if label_id is None and label_title is None:
    raise LineError(f"{where}needs 'label_id' or 'label_title'", "missing_field")
  if not 0 <= start < end <= len(text):
    raise LineError(f"{where}span [{start}, {end}) is empty or outside the text "
                     f"(length {len(text)})", "bad_span")
  if mention is not None and text[start:end] != mention:
    raise LineError(f"{where}mention {mention!r} does not match text[{start}:{end}] = "
                     f"{text[start:end]!r}", "bad_span")
  if label_id is not None:
    _check_label(label_id, catalogue_ids, where)
  return Span(start=start, end=end, label_id=label_id, label_title=label_title,
              mention=text[start:end])


def _parse_document(obj: dict, catalogue_ids: set[int] | None) -> Document:
  doc_id = _field(obj, "id", (str, int))
  text = _field(obj, "text", str)
  raw_spans = _field(obj, "mentions", list)
  spans = tuple(_parse_span(s, text, i, catalogue_ids) for i, s in enumerate(raw_spans))
  return Document(id=doc_id, text=text, spans=spans,
                  world=_field(obj, "world", str, optional=True))


# ---------------------------------------------------------------------------------- readers


def decode_utf8(raw: bytes) -> str:
  """One raw line as text; LineError ("invalid_utf8") names the first bad byte."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LineError(f"invalid UTF-8 at byte {e.start}", "invalid_utf8") from None


def decode_line(raw: bytes) -> dict | None:
  """One raw jsonl line as a JSON object; None for a blank line.

  Raises LineError (invalid UTF-8, not JSON, not an object) for the caller
  to report with its file and line number.
  """
  line = decode_utf8(raw)
  if not line.strip():
    return None
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise LineError(f"not valid JSON ({e.msg} at column {e.colno})", "not_json") from None
  if not isinstance(obj, dict):
    raise LineError(f"expected a JSON object, got {type(obj).__name__}", "not_object")
  return obj


def skip_line(stats: Any, path: PathLike, lineno: int, error: LineError) -> None:
  """Logs a skipped bad line as "path:lineno: what (reason); line skipped" and counts it.

  `stats` is anything with `skipped` and `reasons` (a ReadStats, link_io's StreamStats).
  """
  log.warning("%s:%d: %s (%s); line skipped", path, lineno, error.what, error.reason)
  stats.skipped += 1
  stats.reasons[error.reason] += 1


def _scan(path: PathLike, parse: Callable[[dict], T], *, skip_bad: bool,
          stats: ReadStats | None) -> Iterator[tuple[int, T]]:
  """Yields (byte offset, parse(obj)) per non-blank line; errors name the file and line."""
  stats = stats if stats is not None else ReadStats()
  skipped_before = stats.skipped
  reasons_before = collections.Counter(stats.reasons)
  offset = 0
  with open(path, "rb") as f:  # Binary, so a bad byte is reported with its own line number.
    for lineno, raw in enumerate(f, start=1):
      start, offset = offset, offset + len(raw)
      try:
        obj = decode_line(raw)
        if obj is None:
          continue
        record = parse(obj)
      except LineError as e:
        if not skip_bad:
          raise DataError(f"{path}:{lineno}: {e.what}", e.reason) from None
        skip_line(stats, path, lineno, e)
        continue
      stats.read += 1
      yield start, record
  skipped = stats.skipped - skipped_before
  if skipped:
    new = stats.reasons - reasons_before
    summary = ", ".join(f"{k}={v}" for k, v in sorted(new.items()))
    log.warning("%s: skipped %d bad line(s) (%s)", path, skipped, summary)


def _iter_records(path: PathLike, parse: Callable[[dict], T], *, skip_bad: bool,
                  stats: ReadStats | None) -> Iterator[T]:
  return (record for _, record in _scan(path, parse, skip_bad=skip_bad, stats=stats))


def iter_entities(path: PathLike, *, skip_bad: bool = False,
                  stats: ReadStats | None = None) -> Iterator[Entity]:
  """Streams the entity catalogue at `path`; duplicate ids are an error (or skipped)."""
  return _iter_records(path, _entity_parser(), skip_bad=skip_bad, stats=stats)


def _entity_parser() -> Callable[[dict], Entity]:
  seen: set[int] = set()

  def parse(obj: dict) -> Entity:
    entity = _parse_entity(obj)
    if entity.id in seen:
      raise LineError(f"duplicate entity id {entity.id}", "duplicate_id")
    seen.add(entity.id)
    return entity

  return parse


def iter_mentions(path: PathLike, *, catalogue_ids: set[int] | None = None,
                  skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[Mention]:
  """Streams mentions at `path`; with catalogue_ids, a label outside it (other than -1) is bad."""
  return _iter_records(path, lambda obj: _parse_mention(obj, catalogue_ids),
                       skip_bad=skip_bad, stats=stats)


def iter_documents(path: PathLike, *, catalogue_ids: set[int] | None = None,
                   skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[Document]:
  """Streams documents at `path`, checking every span against the text and the catalogue."""
  return _iter_records(path, lambda obj: _parse_document(obj, catalogue_ids),
                       skip_bad=skip_bad, stats=stats)


def read_entities(path: PathLike, *, skip_bad: bool = False,
                  stats: ReadStats | None = None) -> list[Entity]:
  """The whole entity catalogue at `path` as a list, in file order."""
  return list(iter_entities(path, skip_bad=skip_bad, stats=stats))


def read_mentions(path: PathLike, *, catalogue_ids: set[int] | None = None,
                  skip_bad: bool = False, stats: ReadStats | None = None) -> list[Mention]:
  """All mentions at `path` as a list, in file order."""
  return list(iter_mentions(path, catalogue_ids=catalogue_ids, skip_bad=skip_bad, stats=stats))


def read_documents(path: PathLike, *, catalogue_ids: set[int] | None = None,
                   skip_bad: bool = False, stats: ReadStats | None = None) -> list[Document]:
  """All documents at `path` as a list, in file order."""
  return list(iter_documents(path, catalogue_ids=catalogue_ids, skip_bad=skip_bad, stats=stats))


# ------------------------------------------------------------------------ random access


def _open(path: PathLike, parse: Callable[[dict], T], reparse: Callable[[dict], T],
          label: Callable[[T], int], *, skip_bad: bool,
          stats: ReadStats | None) -> records_lib.Records[T]:
  """Validates every line of `path` once, then reads records by row (see records.py)."""
  offsets, labels, worlds = [], [], []
  for offset, record in _scan(path, parse, skip_bad=skip_bad, stats=stats):
    offsets.append(offset)
    labels.append(label(record))
    worlds.append(record.world)
  offsets = np.asarray(offsets, np.int64)
  stamp = _stamp(path)

  def read(rows: np.ndarray) -> list[T]:
    if _stamp(path) != stamp:  # Offsets into a changed file would read wrong records.
      raise DataError(f"{path} changed after it was opened; reload the data.", "changed")
    out = []
    with open(path, "rb") as f:
      for row in rows:
        f.seek(offsets[row])
        out.append(reparse(decode_line(f.readline())))
    return out

  return records_lib.Records(read, labels, worlds)


def _stamp(path: PathLike) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def open_entities(path: PathLike, *, skip_bad: bool = False,
                  stats: ReadStats | None = None) -> records_lib.Records[Entity]:
  """The catalogue at `path`, checked line by line now and read by row later."""
  return _open(path, _entity_parser(), _parse_entity, lambda e: e.id,
               skip_bad=skip_bad, stats=stats)


def open_mentions(path: PathLike, *, catalogue_ids: set[int] | None = None,
                  skip_bad: bool = False,
                  stats: ReadStats | None = None) -> records_lib.Records[Mention]:
  """The mentions at `path`, checked line by line now and read by row later."""
  return _open(path, lambda obj: _parse_mention(obj, catalogue_ids),
               lambda obj: _parse_mention(obj, None), lambda m: m.label_id,
               skip_bad=skip_bad, stats=stats)


# ---------------------------------------------------------------------------------- writers


def write_jsonl(path: PathLike, records: Iterable[dict[str, Any] | Entity | Mention | Document]
                ) -> int:
  """Writes one JSON object per line, atomically; returns the number of lines written.

  Records may be dicts or the dataclasses above. The file appears complete or not at all:
  lines go to a temporary file in the same directory, which then replaces `path`.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  n = 0
  try:
    with os.fdopen(fd, "wb") as f:
      for record in records:
        obj = record if isinstance(record, dict) else record.to_json()
        f.write(json.dumps(obj, ensure_ascii=False).encode("utf-8"))
        f.write(b"\n")
        n += 1
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return n
