"""Random-access records: a jsonl byte-offset index reads exactly what a full read does."""

import json
import os

import numpy as np
import pytest

from blink_jax.data import jsonl
from blink_jax.data.jsonl import DataError, Entity, Mention, ReadStats
from blink_jax.data.records import Records


def _write(path, lines):
  path.write_bytes(b"".join(
      (x if isinstance(x, bytes) else json.dumps(x, ensure_ascii=False).encode()) + b"\n"
      for x in lines))
  return path


ENTITIES = [Entity(10, "Paris", "capital of France", "geo"),
            Entity(11, "Paris Hilton", "a celebrity", "people"),
            Entity(12, "Lyon", "a city — in France", "geo"),
            Entity(13, "Zoë", "名前", "people")]


def test_open_reads_by_row_what_read_reads(tmp_path):
  path = _write(tmp_path / "e.jsonl", [e.to_json() for e in ENTITIES[:2]] + [b""] +
                [e.to_json() for e in ENTITIES[2:]])
  records = jsonl.open_entities(path)
  assert len(records) == 4
  assert records.labels.tolist() == [10, 11, 12, 13]
  assert records.worlds.tolist() == ["geo", "people", "geo", "people"]
  assert list(records) == jsonl.read_entities(path) == ENTITIES
  assert records.take([3, 0, 3]) == [ENTITIES[3], ENTITIES[0], ENTITIES[3]]
  assert records[2] == ENTITIES[2]
  with pytest.raises(IndexError):
    records.take([4])


def test_views_and_lookup(tmp_path):
  records = jsonl.open_entities(_write(tmp_path / "e.jsonl", [e.to_json() for e in ENTITIES]))
  people = records.in_worlds({"people"})
  assert people.labels.tolist() == [11, 13] and list(people) == [ENTITIES[1], ENTITIES[3]]
  assert records.in_worlds({None}) is records
  sub = people.subset([1])
  assert list(sub) == [ENTITIES[3]] and sub.worlds.tolist() == ["people"]
  assert records.positions_of([13, 10, 99]).tolist() == [3, 0, -1]
  assert records.positions_of(np.array([[12], [11]])).tolist() == [[2], [1]]
  assert people.positions_of([13, 10]).tolist() == [1, -1]


def test_concat_reads_each_part(tmp_path):
  a = jsonl.open_entities(_write(tmp_path / "a.jsonl", [e.to_json() for e in ENTITIES[:3]]))
  b = Records.of(ENTITIES[3:])
  both = Records.concat([a, b])
  assert both.labels.tolist() == [10, 11, 12, 13]
  assert both.take([3, 1, 2]) == [ENTITIES[3], ENTITIES[1], ENTITIES[2]]


def test_mentions_validated_once_and_labels_in_memory(tmp_path):
  mentions = [Mention("left ", "Paris", " right", 10, "geo", id="m0"),
              Mention("", "Zoë", "", -1, "people")]
  good = _write(tmp_path / "m.jsonl", [m.to_json() for m in mentions])
  records = jsonl.open_mentions(good, catalogue_ids={10, 11})
  assert records.labels.tolist() == [10, -1] and list(records) == mentions
  bad = _write(tmp_path / "bad.jsonl", [mentions[0].to_json(), b"\xff{",
                                        {**mentions[0].to_json(), "label_id": 99}])
  with pytest.raises(DataError, match=r"bad.jsonl:2: invalid UTF-8"):
    jsonl.open_mentions(bad, catalogue_ids={10})
  stats = ReadStats()
  kept = jsonl.open_mentions(bad, catalogue_ids={10}, skip_bad=True, stats=stats)
  assert list(kept) == mentions[:1]
  assert stats.reasons == {"invalid_utf8": 1, "label_not_in_catalogue": 1}


def test_a_changed_file_is_refused_not_misread(tmp_path):
  path = _write(tmp_path / "e.jsonl", [e.to_json() for e in ENTITIES])
  records = jsonl.open_entities(path)
  _write(path, [e.to_json() for e in ENTITIES[1:]])
  os.utime(path, ns=(1, 1))  # A different mtime even on coarse-clock filesystems.
  with pytest.raises(DataError, match="changed after it was opened"):
    records.take([0])
