"""A catalogue's entity ids as given (int or str), and the integer labels used inside.

Catalogue ids may be integers (BLINK's files) or strings (Wikidata QIDs, titles, URLs);
they come back exactly as given, JSON type included: 42 stays 42, "Q42" stays "Q42".
Inside, everything works on integer labels (index rows, candidates, training batches):

* a catalogue whose ids are all integers keeps them as its labels, so BLINK's files, and
  everything made from them, are unchanged;
* any other catalogue (string ids, or strings and integers mixed) is labelled by record
  order, 0..N-1, and an `EntityIds` table maps its ids to those labels.

Mention and document files name their gold entities with the catalogue's own ids (label_id);
the readers map them through the table. The integer -1 (NIL_ID) always means "not in the
catalogue": it can never be an id, since integer ids are >= 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Union

import numpy as np

Key = Union[int, str]  # An entity id as the catalogue gives it.


def show(key: Key) -> str:
  """An id as JSON writes it, for messages: 42 and "42" must read differently."""
  return json.dumps(key, ensure_ascii=False)


def labels_for(keys: Sequence[Key]) -> tuple[np.ndarray, list[Key] | None]:
  """(labels, key column) of a catalogue's ids in record order.

  All integers: the ids are the labels and there is no key column. Otherwise the labels
  are the record positions and the key column holds the ids.
  """
  if all(isinstance(k, int) for k in keys):
    return np.asarray(keys, np.int64).reshape(-1), None
  return np.arange(len(keys), dtype=np.int64), list(keys)


class EntityIds:
  """Looks up a catalogue's ids: `label(id)` is the integer label, None if not in it."""

  def __init__(self, labels: Iterable[int], keys: Sequence[Key] | None = None):
    if keys is None:
      # An integer catalogue: an id is its own label, and only membership is needed.
      self._ints = labels if isinstance(labels, (set, frozenset)) else set(
          np.asarray(labels, np.int64).reshape(-1).tolist())
      self._by_key = None
    else:
      labels = np.asarray(labels, np.int64).reshape(-1).tolist()
      if len(labels) != len(keys):
        raise ValueError(f"{len(labels)} labels but {len(keys)} ids.")
      self._ints = None
      self._by_key = dict(zip(keys, labels))

  @classmethod
  def of(cls, entities) -> "EntityIds":
    """The table of a catalogue `Records` (its labels and, if any, its key column)."""
    return cls(entities.labels, entities.keys)

  @property
  def keyed(self) -> bool:
    """Whether the ids differ from the labels (string or mixed ids)."""
    return self._by_key is not None

  def label(self, key: Key) -> int | None:
    """The label of the entity whose id is `key`; None when no entity has that id."""
    if isinstance(key, bool):  # JSON true is not the id 1.
      return None
    if self._by_key is not None:
      return self._by_key.get(key)
    return key if isinstance(key, int) and key in self._ints else None

  def __len__(self) -> int:
    return len(self._by_key) if self._by_key is not None else len(self._ints)
