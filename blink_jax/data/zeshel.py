"""Zeshel (Logeswaran et al. 2019), the zero-shot entity-linking benchmark BLINK trains on.

Raw layout (downloaded by hand, see `Zeshel.MANUAL_DOWNLOAD_INSTRUCTIONS`):

* `documents/<world>.json`: JSON lines {"title", "text", "document_id"}; text is tokenised and
  its tokens joined by single spaces.
* `mentions/{train,val,test}.json`: JSON lines {"mention_id", "context_document_id",
  "label_document_id", "start_index", "end_index", "text", "corpus", "category"}; start/end are
  token indices into the context document, end inclusive; "corpus" is the world.

Conversion to our BLINK records (`jsonl.Entity`, `jsonl.Mention`) follows BLINK's
examples/zeshel/create_BLINK_zeshel_data.py: context_left is up to 128 tokens before the mention,
context_right up to 128 after it, tokens split on " " and rejoined with " ". Deliberate
differences: entity ids are global over all worlds (BLINK numbers entities per world), entity
text is kept whole (the tokenizer truncates it), and nothing is lowercased (the tokenizer does
that for uncased models).

`convert` is the pure-Python core. `Zeshel` wraps it as a tensorflow-datasets builder writing
array_record files, and `load_zeshel` builds it once into a data_dir and reads it back, all
without TensorFlow. `read_documents` gives the end-to-end linker whole context documents with
their mentions as character spans, under the same entity ids.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# LineError and _field are jsonl's per-line error and field check: reusing them keeps messages
# and skip reasons identical across every reader of the package.
from blink_jax.data.jsonl import (DataError, Document, Entity, LineError, Mention, PathLike,
                                  ReadStats, Span, _field, decode_line, skip_line)
from blink_jax.data.records import Records

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
WORLDS: dict[str, tuple[str, ...]] = {
    "train": ("american_football", "doctor_who", "fallout", "final_fantasy", "military",
              "pro_wrestling", "starwars", "world_of_warcraft"),
    "val": ("coronation_street", "muppets", "ice_hockey", "elder_scrolls"),
    "test": ("forgotten_realms", "lego", "star_trek", "yugioh"),
}
# Entity ids are assigned in this order (then document file order), so they are reproducible.
ALL_WORLDS: tuple[str, ...] = WORLDS["train"] + WORLDS["val"] + WORLDS["test"]
CONTEXT_TOKENS = 128  # BLINK's max_tok: tokens kept on each side of a mention.
CONFIGS = ("entities", "mentions")

T = TypeVar("T")


# ------------------------------------------------------------------------- raw line reading


def _read_json_lines(path: Path, parse: Callable[[dict, int], T], *, skip_bad: bool,
                     stats: ReadStats) -> Iterator[T]:
  """Yields parse(obj, byte_offset) per non-blank line, with jsonl's errors and skip counting.

  Like jsonl's reader, but hands each line's byte offset to `parse`, so that a document can
  be read again later by seeking instead of being held in memory.
  """
  skipped: collections.Counter = collections.Counter()
  offset = 0
  with open(path, "rb") as f:  # Binary: offsets are exact and bad bytes keep their line number.
    for lineno, raw in enumerate(f, start=1):
      line_offset, offset = offset, offset + len(raw)
      try:
        obj = decode_line(raw)
        if obj is None:
          continue
        record = parse(obj, line_offset)
      except LineError as e:
        if not skip_bad:
          raise DataError(f"{path}:{lineno}: {e.what}", e.reason) from None
        skip_line(stats, path, lineno, e)
        skipped[e.reason] += 1
        continue
      stats.read += 1
      yield record
  if skipped:
    summary = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
    log.warning("%s: skipped %d bad line(s) (%s)", path, sum(skipped.values()), summary)


@dataclasses.dataclass(frozen=True)
class _Doc:
  id: int       # Global entity id.
  title: str
  offset: int   # Byte offset of the document's line in documents/<world>.json.


@dataclasses.dataclass
class _Index:
  """Every valid document by world and document_id, in file order; texts stay on disk."""

  raw_dir: Path
  docs: dict[str, dict[str, _Doc]]

  def path(self, world: str) -> Path:
    return self.raw_dir / "documents" / f"{world}.json"

  def read_text(self, f: BinaryIO, doc: _Doc) -> str:
    f.seek(doc.offset)
    return json.loads(f.readline())["text"]  # Validated when indexed.


def _index_documents(raw_dir: Path, *, skip_bad: bool, stats: ReadStats) -> _Index:
  """Reads every world's documents once, validating them and assigning global entity ids."""
  doc_dir = raw_dir / "documents"
  if not doc_dir.is_dir():
    raise FileNotFoundError(f"{doc_dir}: no such directory; see "
                            "Zeshel.MANUAL_DOWNLOAD_INSTRUCTIONS")
  unknown = sorted(p.name for p in doc_dir.glob("*.json") if p.stem not in ALL_WORLDS)
  if unknown:
    log.warning("%s: ignoring files of unknown worlds: %s", doc_dir, ", ".join(unknown))
  index = _Index(raw_dir, {})
  next_id = 0
  for world in ALL_WORLDS:
    path = index.path(world)
    if not path.exists():
      continue
    docs: dict[str, _Doc] = {}

    def parse(obj: dict, offset: int, docs: dict[str, _Doc] = docs) -> tuple[str, str, int]:
      doc_id = _field(obj, "document_id", str)
      title = _field(obj, "title", str)
      _field(obj, "text", str)
      if doc_id in docs:  # The loop below files each line before the next is parsed.
        raise LineError(f"duplicate document_id {doc_id!r}", "duplicate_id")
      return doc_id, title, offset

    for doc_id, title, offset in _read_json_lines(path, parse, skip_bad=skip_bad, stats=stats):
      docs[doc_id] = _Doc(next_id, title, offset)
      next_id += 1
    index.docs[world] = docs

  missing = [w for w in ALL_WORLDS if w not in index.docs]
  if missing:
    log.warning("%s: no documents file for %d world(s) (%s); their mentions will be rejected",
                doc_dir, len(missing), ", ".join(missing))
  for split, worlds in WORLDS.items():
    if not any(index.docs.get(w) for w in worlds):
      # tfds cannot write an empty split; say why instead.
      raise FileNotFoundError(f"{doc_dir}: no documents for any {split} world "
                              f"({', '.join(worlds)})")
  return index


# ------------------------------------------------------------------------------ conversion


def _iter_entities(index: _Index, worlds: Iterable[str]) -> Iterator[Entity]:
  """The valid documents of `worlds` as entities, in id order."""
  for world in worlds:
    docs = index.docs.get(world)
    if not docs:
      continue
    with open(index.path(world), "rb") as f:
      for doc in docs.values():
        yield Entity(id=doc.id, title=doc.title, text=index.read_text(f, doc), world=world)


@dataclasses.dataclass(frozen=True)
class _Link:
  """One validated line of mentions/<split>.json: tokens[start:end + 1] of `context` name `label`.

  Both mention records and documents are made from these, so that the two accept and reject
  the same lines and give a mention the same entity id.
  """

  id: str
  world: str
  context_id: str      # The context document's document_id.
  context: _Doc
  label: _Doc
  start: int           # Token index of the first mention token.
  end: int             # Token index of the last mention token (inclusive, as in Zeshel).
  tokens: list[str]    # The context document's text split on " " (shared; do not modify).


def _iter_links(index: _Index, split: str, *, skip_bad: bool,
                stats: ReadStats) -> Iterator[_Link]:
  """Streams mentions/{split}.json, validating each line against its documents."""
  path = index.raw_dir / "mentions" / f"{split}.json"
  split_worlds = WORLDS[split]
  files: dict[str, BinaryIO] = {}

  # Mentions come grouped by context document, so a small cache avoids re-reading each one.
  @functools.lru_cache(maxsize=64)
  def tokens(world: str, doc: _Doc) -> list[str]:
    if world not in files:
      files[world] = open(index.path(world), "rb")
    return index.read_text(files[world], doc).split(" ")

  def parse(obj: dict, _: int) -> _Link:
    mention_id = _field(obj, "mention_id", str)
    context_id = _field(obj, "context_document_id", str)
    label_id = _field(obj, "label_document_id", str)
    start = _field(obj, "start_index", int)
    end = _field(obj, "end_index", int)
    surface = _field(obj, "text", str)
    world = _field(obj, "corpus", str)
    if world not in split_worlds:
      # A mention of another split's world would leak entities across the zero-shot split.
      raise LineError(f"corpus {world!r} is not a {split} world", "world_not_in_split")
    docs = index.docs.get(world, {})
    context = docs.get(context_id)
    if context is None:
      raise LineError(f"context document {context_id!r} not found in {world} documents",
                       "document_not_found")
    label = docs.get(label_id)
    if label is None:
      raise LineError(f"label document {label_id!r} not found in {world} documents",
                       "document_not_found")
    toks = tokens(world, context)
    if start > end:
      raise LineError(f"start_index {start} > end_index {end}", "bad_span")
    if start < 0 or end >= len(toks):
      raise LineError(f"span [{start}, {end}] is outside the context document "
                       f"({len(toks)} tokens)", "bad_span")
    mention = " ".join(toks[start:end + 1])
    # Case-insensitive, as BLINK checks it, so that we refuse nothing BLINK accepts.
    if mention.lower() != surface.lower():
      raise LineError(f"mention text {surface!r} does not match tokens[{start}:{end + 1}] = "
                       f"{mention!r}", "mention_mismatch")
    # Only reachable through empty tokens (double spaces); a blank span is no mention and
    # would be an empty character span in a document.
    if not mention.strip():
      raise LineError(f"tokens[{start}:{end + 1}] cover no text", "bad_span")
    return _Link(mention_id, world, context_id, context, label, start, end, toks)

  n = 0
  try:
    for link in _read_json_lines(path, parse, skip_bad=skip_bad, stats=stats):
      n += 1
      yield link
  finally:
    for f in files.values():
      f.close()
  if not n:
    raise DataError(f"{path}: no valid mentions", "empty")


def _iter_mentions(index: _Index, split: str, *, skip_bad: bool,
                   stats: ReadStats) -> Iterator[Mention]:
  """Streams mentions/{split}.json as BLINK mentions (contexts cut to CONTEXT_TOKENS a side)."""
  for link in _iter_links(index, split, skip_bad=skip_bad, stats=stats):
    toks, start, end = link.tokens, link.start, link.end
    yield Mention(
        context_left=" ".join(toks[max(0, start - CONTEXT_TOKENS):start]),
        mention=" ".join(toks[start:end + 1]),
        context_right=" ".join(toks[end + 1:end + 1 + CONTEXT_TOKENS]),
        label_id=link.label.id, world=link.world, id=link.id, label_title=link.label.title)


def _documents(index: _Index, split: str, *, skip_bad: bool,
               stats: ReadStats) -> list[Document]:
  """The context documents of `split`'s mentions, each with its mentions as character spans.

  Documents come in order of first appearance in the mentions file, spans in text order.
  """
  # context entity id -> (document_id, world, text, token starts, spans); dicts keep order.
  found: dict[int, tuple[str, str, str, list[int], list[Span]]] = {}
  for link in _iter_links(index, split, skip_bad=skip_bad, stats=stats):
    if link.context.id not in found:
      # The text is its tokens joined by single spaces (split(" ") round trips exactly), so
      # each token starts one character after the previous one ends.
      starts = list(itertools.accumulate((len(t) + 1 for t in link.tokens[:-1]), initial=0))
      found[link.context.id] = (link.context_id, link.world, " ".join(link.tokens), starts, [])
    _, _, text, starts, spans = found[link.context.id]
    start, end = starts[link.start], starts[link.end] + len(link.tokens[link.end])
    spans.append(Span(start=start, end=end, label_id=link.label.id,
                      label_title=link.label.title, mention=text[start:end]))
  return [Document(id=doc_id, text=text, world=world,
                   spans=tuple(sorted(spans, key=lambda s: (s.start, s.end))))
          for doc_id, world, text, _, spans in found.values()]


class _Replayable(Generic[T]):
  """An iterable that restarts its generator on each iteration (a generator runs only once)."""

  def __init__(self, make: Callable[[], Iterator[T]]):
    self._make = make

  def __iter__(self) -> Iterator[T]:
    return self._make()


def check_raw_dir(raw_dir: PathLike) -> None:
  """Fails, before any work, when `raw_dir` is not an unpacked Zeshel release."""
  raw_dir = Path(raw_dir)
  if not (raw_dir / "documents").is_dir():
    raise FileNotFoundError(
        f"config.data.zeshel_dir={os.fspath(raw_dir)!r} has no documents/ folder: point it "
        "at the unpacked Zeshel release (documents/<world>.json, mentions/<split>.json).")
  _check_mention_files(raw_dir, SPLITS)


def _check_mention_files(raw_dir: Path, splits: Iterable[str]) -> None:
  """Fails before the long documents pass, not after it, when a mentions file is missing."""
  for split in splits:
    path = raw_dir / "mentions" / f"{split}.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no such file; see Zeshel.MANUAL_DOWNLOAD_INSTRUCTIONS")


def convert(raw_dir: PathLike, *, skip_bad: bool = False,
            stats: ReadStats | None = None) -> dict[str, dict[str, Iterable[Any]]]:
  """Raw Zeshel at `raw_dir` as BLINK records: out["entities"|"mentions"][split].

  out["entities"][split] yields `Entity`s of that split's worlds (global ids: worlds in
  `ALL_WORLDS` order, documents in file order); out["mentions"][split] yields `Mention`s.
  All documents are validated and indexed here (titles and byte offsets, not texts); the
  iterables stream lazily, so mention errors surface while iterating. A bad line raises
  `DataError("{path}:{lineno}: ...")`, or with skip_bad is skipped and counted in `stats`.
  """
  raw_dir = Path(raw_dir)
  stats = stats if stats is not None else ReadStats()
  _check_mention_files(raw_dir, SPLITS)
  index = _index_documents(raw_dir, skip_bad=skip_bad, stats=stats)
  return {
      "entities": {s: _Replayable(functools.partial(_iter_entities, index, WORLDS[s]))
                   for s in SPLITS},
      "mentions": {s: _Replayable(functools.partial(_iter_mentions, index, s,
                                                    skip_bad=skip_bad, stats=stats))
                   for s in SPLITS},
  }


# ------------------------------------------------------------------------ tfds builder


class Zeshel(tfds.core.GeneratorBasedBuilder):
  """Zeshel as array_record files: config "entities" or "mentions", splits train/val/test.

  Entities of a split are the documents of its worlds. Built and read without TensorFlow:
  tfds writes array_record through the array_record module and serialises examples with its
  own bundled protos; the one workaround needed is `code_path` below, and it is about a tfds
  packaging bug, not TensorFlow. Importing this module registers the builder, after which
  `tfds.data_source("zeshel/mentions", split="train", data_dir=...)` reads a built copy.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "BLINK-format entities and mentions, global entity ids."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download Zeshel from https://github.com/lajanugen/zeshel (zeshel.tar.bz2, linked from its
  README), unpack it, and pass the folder holding `documents/` and `mentions/` as manual_dir
  (load_zeshel's raw_dir). Expected files: documents/<world>.json for the 16 worlds and
  mentions/train.json, mentions/val.json, mentions/test.json.
  """
  # tfds 4.9.10's default code_path does `isinstance(path, importlib_resources.abc.Traversable)`
  # for builders defined in a package, but declares importlib_resources only for Python < 3.9
  # (tensorflow/datasets#11212), so download_and_prepare dies with ModuleNotFoundError. The
  # path is only used to look for a checksums.tsv beside the code; Zeshel has none.
  code_path = epath.Path(__file__)
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="entities", description="Documents as entities."),
      tfds.core.BuilderConfig(name="mentions", description="Mentions in BLINK format."),
  ]

  def __init__(self, *, skip_bad: bool = False, stats: ReadStats | None = None,
               source: dict[str, dict[str, Iterable[Any]]] | None = None, **kwargs: Any):
    """skip_bad/stats as in `convert`; `source`, a `convert` result, spares re-indexing when
    both configs are built in a row (each config is its own builder)."""
    self._skip_bad = skip_bad
    self._stats = stats
    self._source = source
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    if self.builder_config.name == "entities":
      features = {"id": np.int64, "title": text, "text": text, "world": text}
    else:
      features = {"context_left": text, "mention": text, "context_right": text,
                  "label_id": np.int64, "world": text, "id": text, "label_title": text}
    # dataset_info_from_configs would want a README beside this file; DatasetInfo does not.
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=tfds.features.FeaturesDict(features),
        homepage="https://github.com/lajanugen/zeshel",
        disable_shuffling=True)  # Keep file order: entities stay sorted by id.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    source = self._source
    if source is None:
      source = convert(Path(os.fspath(dl_manager.manual_dir)), skip_bad=self._skip_bad,
                       stats=self._stats)
    records = source[self.builder_config.name]
    return {split: self._generate_examples(records[split]) for split in SPLITS}

  def _generate_examples(self, records: Iterable[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, r in enumerate(records):
      if isinstance(r, Entity):
        yield r.id, {"id": r.id, "title": r.title, "text": r.text, "world": r.world}
      else:
        yield i, {"context_left": r.context_left, "mention": r.mention,
                  "context_right": r.context_right, "label_id": r.label_id, "world": r.world,
                  "id": r.id, "label_title": r.label_title}


# ---------------------------------------------------------------------------------- readers


def prepare_zeshel(raw_dir: PathLike, data_dir: PathLike, *, skip_bad: bool = False,
                   stats: ReadStats | None = None) -> bool:
  """Builds both configs into data_dir unless already there; True when something was built.

  A built copy is reused as is, whatever raw_dir or skip_bad say now: delete
  data_dir/zeshel to rebuild. tfds writes into a temporary folder and renames it when done,
  so a failed build leaves nothing that counts as built. Run it on one process before
  others read a shared data_dir.
  """
  pending = [c for c in CONFIGS if not Zeshel(config=c, data_dir=data_dir).is_prepared()]
  if not pending:
    return False
  source = convert(raw_dir, skip_bad=skip_bad, stats=stats)
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(raw_dir))
  for config in pending:
    Zeshel(config=config, data_dir=data_dir, source=source).download_and_prepare(
        download_config=download_config)
  return True


def _records(data_dir: PathLike, config: str, split: str, make: Callable[[dict], T],
             label: str) -> Records[T]:
  """The split as Records read by row from its array_record files.

  One pass reads the label and world columns; records are decoded again only
  for the rows a batch asks for.
  """
  source = Zeshel(config=config, data_dir=data_dir).as_data_source(split=split)
  labels, worlds = [], []
  for i in range(0, len(source), 4096):
    for ex in source.__getitems__(list(range(i, min(i + 4096, len(source))))):
      labels.append(int(ex[label]))
      worlds.append(_str(ex["world"]))
  return Records(lambda rows: [make(ex) for ex in source.__getitems__(
      [int(r) for r in rows])], labels, worlds)


def _str(value: bytes) -> str:
  return value.decode("utf-8")  # tfds Text features come back as bytes.


def _entity(ex: dict) -> Entity:
  return Entity(id=int(ex["id"]), title=_str(ex["title"]), text=_str(ex["text"]),
                world=_str(ex["world"]))


def _mention(ex: dict) -> Mention:
  return Mention(context_left=_str(ex["context_left"]), mention=_str(ex["mention"]),
                 context_right=_str(ex["context_right"]), label_id=int(ex["label_id"]),
                 world=_str(ex["world"]), id=_str(ex["id"]),
                 label_title=_str(ex["label_title"]))


def load_zeshel(raw_dir: PathLike, data_dir: PathLike, split: str, *, skip_bad: bool = False,
                stats: ReadStats | None = None) -> tuple[Records[Entity], Records[Mention]]:
  """The entities of `split`'s worlds (in id order) and its mentions (in file order).

  Builds the tfds dataset into data_dir on first use (see `prepare_zeshel`); later calls only
  read it, by row. Entity ids are global, so a split's ids do not start at 0.
  """
  if split not in WORLDS:
    raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  prepare_zeshel(raw_dir, data_dir, skip_bad=skip_bad, stats=stats)
  return (_records(data_dir, "entities", split, _entity, "id"),
          _records(data_dir, "mentions", split, _mention, "label_id"))


def read_documents(raw_dir: PathLike, splits: Sequence[str] = SPLITS, *, skip_bad: bool = False,
                   stats: ReadStats | None = None) -> dict[str, list[Document]]:
  """Each split's context documents with their gold mentions, for the end-to-end linker.

  Every document that has a mention in mentions/{split}.json becomes one `Document`: its
  text as released, its mentions as character spans (end exclusive) labelled with the same
  global entity ids as `convert`'s records, and its world. Lines are validated exactly as
  `convert` validates them, so with skip_bad both drop the same mentions. Reads every
  documents file once to rebuild the entity ids (see `_index_documents`), then each split's
  mentions; the documents are returned in memory.
  """
  unknown = [s for s in splits if s not in WORLDS]
  if unknown:
    raise ValueError(f"splits must be among {', '.join(SPLITS)}, got {unknown}")
  raw_dir = Path(raw_dir)
  stats = stats if stats is not None else ReadStats()
  _check_mention_files(raw_dir, splits)
  index = _index_documents(raw_dir, skip_bad=skip_bad, stats=stats)
  return {s: _documents(index, s, skip_bad=skip_bad, stats=stats) for s in splits}
