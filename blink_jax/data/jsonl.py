"""BLINK-format jsonl I/O shared by every stage: entity catalogues, mentions, documents.

Three line formats (extra keys such as "dataset" are accepted and ignored):

* entity:   {"id": int|str, "title": str, "text": str, "url"?: str, "world"?: str}
* mention:  {"context_left": str, "mention": str, "context_right": str, "label_id": int|str,
             "world"?: str, "id"?: str|int, "label_title"?: str}; label_id -1 means NIL.
* document: {"id": str|int, "text": str, "world"?: str,
             "mentions": [{"start": int, "end": int, "label_id"?: int|str,
                           "label_title"?: str, "mention"?: str}]}  (character offsets, end
             exclusive; at least one of label_id / label_title).

Entity ids are integers >= 0 (BLINK) or non-empty strings (e.g. Wikidata QIDs, URLs). A
catalogue of integer ids uses them as its labels; any other is labelled by record order,
and a mention's or span's label_id, read with the catalogue (`catalogue_ids`), is mapped
to that label (see `entity_ids`). Records hold the labels; an `Entity` also keeps its id
as given (`entity_id`).

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

from blink_jax import storage
from blink_jax.data import entity_ids as entity_ids_lib
from blink_jax.data import records as records_lib
from blink_jax.data.entity_ids import EntityIds, Key

log = logging.getLogger(__name__)

NIL_ID = -1  # label_id of a mention whose gold entity is not in the catalogue.

PathLike = Union[str, os.PathLike]
T = TypeVar("T")
# What mentions and documents are checked (and their string ids mapped) against: a
# catalogue's table, or the set of an integer catalogue's ids.
Catalogue = Union[EntityIds, set, frozenset, None]


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
  """One catalogue entry; `id` is the global integer label that mentions point to.

  `key` is the catalogue's own id when it is not `id` itself (string or mixed ids, see
  `entity_ids`); `entity_id` is the id as given either way. `url` is optional.
  """

  id: int
  title: str
  text: str
  world: str | None = None
  key: Key | None = None
  url: str | None = None

  @property
  def entity_id(self) -> Key:
    """The id as the catalogue gives it (42 or "Q42")."""
    return self.id if self.key is None else self.key

  def to_json(self) -> dict[str, Any]:
    """The entity line format, with the id as given (url and world only when set)."""
    out: dict[str, Any] = {"id": self.entity_id, "title": self.title, "text": self.text}
    if self.url is not None:
      out["url"] = self.url
    if self.world is not None:
      out["world"] = self.world
    return out


@dataclasses.dataclass(frozen=True)
class Mention:
  """A mention in context; label_id == NIL_ID (-1) when the gold entity is not in the catalogue.

  label_id is the catalogue's label (its id for an integer catalogue; see `entity_ids`).
  """

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


def _as_catalogue(catalogue_ids: Catalogue) -> EntityIds | None:
  """The lookup table of what a reader was given (a set of integer ids is its own)."""
  if catalogue_ids is None or isinstance(catalogue_ids, EntityIds):
    return catalogue_ids
  return EntityIds(catalogue_ids)


def _label(obj: dict, catalogue: EntityIds | None, where: str = "",
           optional: bool = False) -> int | None:
  """obj["label_id"] as a catalogue label: -1 stays NIL, an id is mapped through the table.

  Without a catalogue an integer is taken as it is (BLINK files read alone); a string id
  cannot be, since only its catalogue knows its label.
  """
  value = _field(obj, "label_id", (int, str), where=where, optional=optional)
  if value is None or value == NIL_ID:
    return value
  if catalogue is None:
    if isinstance(value, str):
      raise LineError(f"{where}label_id {entity_ids_lib.show(value)} is a string id: read "
                      "the file with its entity catalogue", "label_not_in_catalogue")
    return value
  label = catalogue.label(value)
  if label is None:
    raise LineError(f"{where}label_id {entity_ids_lib.show(value)} is not in the entity "
                    "catalogue", "label_not_in_catalogue")
  return label


def _entity_key(obj: dict) -> Key:
  key = _field(obj, "id", (int, str))
  if isinstance(key, int) and key < 0:
    raise LineError(f"entity id must be >= 0, got {key}", "bad_field")
  if isinstance(key, str) and not key.strip():
    raise LineError(f"entity id must not be empty, got {key!r}", "bad_field")
  return key


def _parse_entity(obj: dict, label: int, keyed: bool) -> Entity:
  """The entity of a line, labelled `label`; `keyed`: its id is kept apart from the label
  (a catalogue labelled by record order; in an integer catalogue the id is the label)."""
  key = _entity_key(obj)
  return Entity(id=label, title=_field(obj, "title", str), text=_field(obj, "text", str),
                world=_field(obj, "world", str, optional=True), key=key if keyed else None,
                url=_field(obj, "url", str, optional=True))


def _parse_mention(obj: dict, catalogue: EntityIds | None) -> Mention:
  label_id = _label(obj, catalogue)
  return Mention(
      context_left=_field(obj, "context_left", str),
      mention=_field(obj, "mention", str),
      context_right=_field(obj, "context_right", str),
      label_id=label_id,
      world=_field(obj, "world", str, optional=True),
      id=_field(obj, "id", (str, int), optional=True),
      label_title=_field(obj, "label_title", str, optional=True),
  )


def _parse_span(obj: Any, text: str, i: int, catalogue: EntityIds | None) -> Span:
  where = f"mentions[{i}]: "
  if not isinstance(obj, dict):
    raise LineError(f"{where}must be an object, got {type(obj).__name__}", "bad_field")
  start = _field(obj, "start", int, where=where)
  end = _field(obj, "end", int, where=where)
  label_id = _label(obj, catalogue, where, optional=True)
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
  return Span(start=start, end=end, label_id=label_id, label_title=label_title,
              mention=text[start:end])


def _parse_document(obj: dict, catalogue: EntityIds | None) -> Document:
  doc_id = _field(obj, "id", (str, int))
  text = _field(obj, "text", str)
  raw_spans = _field(obj, "mentions", list)
  spans = tuple(_parse_span(s, text, i, catalogue) for i, s in enumerate(raw_spans))
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
  # Binary, so a bad byte is reported with its own line number.
  with open(storage.local_file(path), "rb") as f:
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
  """Streams the entity catalogue at `path`; duplicate ids are an error (or skipped).

  Two passes over the file: whether the ids are all integers, which decides the labels
  (see `entity_ids`), is known only at its end.
  """
  return iter(open_entities(path, skip_bad=skip_bad, stats=stats))


def _entity_key_parser() -> Callable[[dict], tuple[Key, str | None]]:
  """The first pass over a catalogue: each line checked whole, (id, world) kept."""
  seen: set = set()  # 42 and "42" are two ids (and True is no id: _field refuses bools).

  def parse(obj: dict) -> tuple[Key, str | None]:
    entity = _parse_entity(obj, 0, keyed=True)  # Every field checked; labels come later.
    key = entity.key
    if key in seen:
      raise LineError(f"duplicate entity id {entity_ids_lib.show(key)}", "duplicate_id")
    seen.add(key)
    return key, entity.world

  return parse


def iter_mentions(path: PathLike, *, catalogue_ids: Catalogue = None,
                  skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[Mention]:
  """Streams mentions at `path`; with catalogue_ids (an `EntityIds`, or a set of integer
  ids), label ids are mapped to the catalogue's labels and one outside it (other than -1)
  is bad."""
  catalogue = _as_catalogue(catalogue_ids)
  return _iter_records(path, lambda obj: _parse_mention(obj, catalogue),
                       skip_bad=skip_bad, stats=stats)


def iter_documents(path: PathLike, *, catalogue_ids: Catalogue = None,
                   skip_bad: bool = False, stats: ReadStats | None = None) -> Iterator[Document]:
  """Streams documents at `path`, checking every span against the text and the catalogue."""
  catalogue = _as_catalogue(catalogue_ids)
  return _iter_records(path, lambda obj: _parse_document(obj, catalogue),
                       skip_bad=skip_bad, stats=stats)


def read_entities(path: PathLike, *, skip_bad: bool = False,
                  stats: ReadStats | None = None) -> list[Entity]:
  """The whole entity catalogue at `path` as a list, in file order."""
  return list(iter_entities(path, skip_bad=skip_bad, stats=stats))


def read_mentions(path: PathLike, *, catalogue_ids: Catalogue = None,
                  skip_bad: bool = False, stats: ReadStats | None = None) -> list[Mention]:
  """All mentions at `path` as a list, in file order."""
  return list(iter_mentions(path, catalogue_ids=catalogue_ids, skip_bad=skip_bad, stats=stats))


def read_documents(path: PathLike, *, catalogue_ids: Catalogue = None,
                   skip_bad: bool = False, stats: ReadStats | None = None) -> list[Document]:
  """All documents at `path` as a list, in file order."""
  return list(iter_documents(path, catalogue_ids=catalogue_ids, skip_bad=skip_bad, stats=stats))


# ------------------------------------------------------------------------ random access


def _open(path: PathLike, parse: Callable[[dict], Any], reparse: Callable[[dict, int], T],
          columns: Callable[[Any], tuple[Any, str | None]], *, skip_bad: bool,
          stats: ReadStats | None, labelled: Callable[[list], tuple] | None = None
          ) -> records_lib.Records[T]:
  """Validates every line of `path` once, then reads records by row (see records.py).

  `columns(parsed)` gives a line's (label, world); `labelled(labels)` may turn the labels
  of the whole file into (labels, key column) (a catalogue's ids, see `entity_ids`);
  `reparse(obj, label)` makes the record of a row when it is read.
  """
  offsets, labels, worlds = [], [], []
  for offset, parsed in _scan(path, parse, skip_bad=skip_bad, stats=stats):
    offsets.append(offset)
    label, world = columns(parsed)
    labels.append(label)
    worlds.append(world)
  offsets = np.asarray(offsets, np.int64)
  labels, keys = labelled(labels) if labelled else (labels, None)
  labels = np.asarray(labels, np.int64)
  stamp = _stamp(path)

  def read(rows: np.ndarray) -> list[T]:
    if _stamp(path) != stamp:  # Offsets into a changed file would read wrong records.
      raise DataError(f"{path} changed after it was opened; reload the data.", "changed")
    out = []
    with open(storage.local_file(path), "rb") as f:
      for row in rows:
        f.seek(offsets[row])
        out.append(reparse(decode_line(f.readline()), int(labels[row])))
    return out

  return records_lib.Records(read, labels, worlds, keys=keys)


def _stamp(path: PathLike) -> tuple[int, int]:
  return storage.getsize_and_mtime(path)


def open_entities(path: PathLike, *, skip_bad: bool = False,
                  stats: ReadStats | None = None) -> records_lib.Records[Entity]:
  """The catalogue at `path`, checked line by line now and read by row later.

  Its labels are its ids when they are all integers, else the record positions, with the
  ids in `keys` (`EntityIds.of(records)` looks them up).
  """
  keyed = []  # Set at the end of the first pass: whether the labels are record positions.

  def labelled(keys: list) -> tuple[np.ndarray, list | None]:
    labels, key_column = entity_ids_lib.labels_for(keys)
    keyed.append(key_column is not None)
    return labels, key_column

  def reparse(obj: dict, label: int) -> Entity:
    return _parse_entity(obj, label, keyed[0])

  return _open(path, _entity_key_parser(), reparse, lambda parsed: parsed,
               skip_bad=skip_bad, stats=stats, labelled=labelled)


def open_mentions(path: PathLike, *, catalogue_ids: Catalogue = None,
                  skip_bad: bool = False,
                  stats: ReadStats | None = None) -> records_lib.Records[Mention]:
  """The mentions at `path`, checked line by line now and read by row later."""
  catalogue = _as_catalogue(catalogue_ids)
  return _open(path, lambda obj: _parse_mention(obj, catalogue),
               # The row passed this parse once: with the same table it maps the same way.
               lambda obj, label: _parse_mention(obj, catalogue),
               lambda m: (m.label_id, m.world), skip_bad=skip_bad, stats=stats)


# ---------------------------------------------------------------------------------- writers


def write_jsonl(path: PathLike, records: Iterable[dict[str, Any] | Entity | Mention | Document]
                ) -> int:
  """Writes one JSON object per line, atomically; returns the number of lines written.

  Records may be dicts or the dataclasses above. The file appears complete or not at all:
  lines go to a temporary file in the same directory, which then replaces `path` (for a
  gs:// `path`, a local temporary file uploaded as one object).
  """
  if storage.is_remote(path):
    with tempfile.TemporaryDirectory(prefix="blink_jax.") as tmp:
      local = os.path.join(tmp, os.path.basename(os.fspath(path)))
      n = write_jsonl(local, records)
      storage.upload_file(local, path)
    return n
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
