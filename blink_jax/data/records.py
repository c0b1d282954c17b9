"""Random-access record collections: each host reads only the rows it uses.

A `Records` holds in memory only what global decisions need, one small
column per record: its integer `label` (an entity's id; a mention's gold
label_id) and its `world`; and, for a catalogue whose ids are not all
integers, its `keys` (the ids as given; the labels are then record positions,
see `entity_ids`). The records themselves (titles, descriptions,
contexts) stay on disk and are read by row when a batch needs them: a jsonl
file through a byte-offset index built in one validating pass, a tfds
array_record dataset through its data source. So a process that tokenizes
rows 0-63 of a global batch of 128 reads those 64 records and no others, and a
catalogue of millions of entities is encoded in a stream, never held as text.

`Records.of(list)` wraps records already in memory (tests, small data).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
ReadFn = Callable[[np.ndarray], list]  # rows (into the backing store) -> records


class Records(Generic[T]):
  """A sequence of records read by row, with their labels and worlds in memory."""

  def __init__(self, read: ReadFn, labels: np.ndarray, worlds: np.ndarray,
               rows: np.ndarray | None = None, keys: Sequence | None = None):
    self._read = read
    self._labels = np.asarray(labels, np.int64)
    self._worlds = np.asarray(worlds, object)
    if len(self._labels) != len(self._worlds):
      raise ValueError(f"{len(self._labels)} labels but {len(self._worlds)} worlds.")
    self._keys = None if keys is None else _object_column(keys)
    if self._keys is not None and len(self._keys) != len(self._labels):
      raise ValueError(f"{len(self._labels)} labels but {len(self._keys)} ids.")
    # A subset is a view: `rows` maps its positions to rows of the backing store.
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    self._order: np.ndarray | None = None  # argsort of labels, for positions_of.

  @classmethod
  def of(cls, records: Sequence[T]) -> "Records[T]":
    """Records already in memory, labelled by `label_id` (mentions) or `id` (entities)."""
    records = list(records)
    labels = [r.label_id if hasattr(r, "label_id") else r.id for r in records]
    # Entities of a catalogue with string ids carry them (`key`); the column is kept
    # only then, as `open_entities` does.
    keyed = any(getattr(r, "key", None) is not None for r in records)
    return cls(lambda rows: [records[i] for i in rows], labels,
               [r.world for r in records],
               keys=[r.entity_id for r in records] if keyed else None)

  @classmethod
  def concat(cls, parts: Sequence["Records[T]"]) -> "Records[T]":
    """One collection of several, in order; each part still reads its own store."""
    starts = np.cumsum([0] + [len(p) for p in parts])

    def read(rows: np.ndarray) -> list[T]:
      part = np.searchsorted(starts, rows, side="right") - 1
      out: list = [None] * len(rows)
      for j in np.unique(part):  # One read per part, results put back in order.
        where = np.flatnonzero(part == j)
        for i, r in zip(where, parts[j].take(rows[where] - starts[j])):
          out[i] = r
      return out

    keyed = any(p.keys is not None for p in parts)
    keys = (np.concatenate([p.keys if p.keys is not None else _object_column(p.labels.tolist())
                            for p in parts]) if keyed else None)
    return cls(read, np.concatenate([p.labels for p in parts] or [[]]),
               np.concatenate([p.worlds for p in parts] or [[]]), keys=keys)

  # ------------------------------------------------------------- columns
  @property
  def labels(self) -> np.ndarray:
    """[N] int64: entity ids for a catalogue, gold label ids for mentions."""
    return self._labels if self._rows is None else self._labels[self._rows]

  @property
  def worlds(self) -> np.ndarray:
    """[N] object: each record's world, None for a single knowledge base."""
    return self._worlds if self._rows is None else self._worlds[self._rows]

  @property
  def keys(self) -> np.ndarray | None:
    """[N] object: a catalogue's ids as given (int or str), when they are not the labels."""
    if self._keys is None:
      return None
    return self._keys if self._rows is None else self._keys[self._rows]

  def __len__(self) -> int:
    return len(self._labels) if self._rows is None else len(self._rows)

  # --------------------------------------------------------------- reading
  def take(self, positions: Sequence[int] | np.ndarray) -> list[T]:
    """The records at `positions`, read from the backing store."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
      raise IndexError(f"Positions outside [0, {len(self)}).")
    return self._read(positions if self._rows is None else self._rows[positions])

  def __getitem__(self, i: int) -> T:
    return self.take([i])[0]

  def __iter__(self) -> Iterator[T]:
    for chunk in self.chunks(1024):
      yield from chunk

  def chunks(self, size: int) -> Iterator[list[T]]:
    """Consecutive runs of `size` records: a streaming read of the whole set."""
    for start in range(0, len(self), size):
      yield self.take(np.arange(start, min(start + size, len(self))))

  # ---------------------------------------------------------------- views
  def subset(self, positions: Sequence[int] | np.ndarray) -> "Records[T]":
    """A view of the records at `positions` (no record is read)."""
    positions = np.asarray(positions, np.int64)
    base = positions if self._rows is None else self._rows[positions]
    return Records(self._read, self._labels, self._worlds, rows=base, keys=self._keys)

  def in_worlds(self, worlds: set) -> "Records[T]":
    """The records whose world is in `worlds` (all of them if worlds == {None})."""
    if worlds == {None}:
      return self
    return self.subset(np.flatnonzero([w in worlds for w in self.worlds]))

  def positions_of(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Positions of the records with these labels (entity ids); -1 if absent."""
    # A sorted column, not a dict: 8 bytes per entity even for millions of them.
    mine = self.labels
    if self._order is None:
      self._order = np.argsort(mine, kind="stable")
    want = np.asarray(labels, np.int64)
    if not len(mine):
      return np.full(want.shape, -1, np.int64)
    i = np.minimum(np.searchsorted(mine, want, sorter=self._order), len(mine) - 1)
    pos = self._order[i]
    return np.where(mine[pos] == want, pos, -1)


def _object_column(values: Sequence) -> np.ndarray:
  """A 1-D object array of `values` as they are (np.asarray would turn ids into strings)."""
  out = np.empty(len(values), object)
  out[:] = list(values)
  return out
