"""Catalogue ids as given (strings, URLs, integers): labels inside, the same ids back out."""

import json

import numpy as np
import pytest

from blink_jax.data import entity_ids
from blink_jax.data import jsonl
from blink_jax.data.entity_ids import EntityIds
from blink_jax.data.jsonl import DataError, Entity
from blink_jax.data.records import Records


def _write(path, objs):
  path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs),
                  encoding="utf-8")
  return path


QIDS = [{"id": "Q90", "title": "Paris", "text": "Capital of France.",
         "url": "https://www.wikidata.org/wiki/Q90"},
        {"id": "Q456", "title": "Lyon", "text": "A city on the Rhône."},
        {"id": "Q1", "title": "Universe", "text": "Everything."}]
URLS = [{"id": "https://en.wikipedia.org/wiki/Paris", "title": "Paris", "text": "A city."},
        {"id": "https://en.wikipedia.org/wiki/Paris_(mythology)", "title": "Paris",
         "text": "A Trojan prince."}]


def test_string_ids_are_labelled_by_order_and_read_back_as_given(tmp_path):
  path = _write(tmp_path / "kb.jsonl", QIDS)
  kb = jsonl.open_entities(path)
  assert kb.labels.tolist() == [0, 1, 2]
  assert kb.keys.tolist() == ["Q90", "Q456", "Q1"]
  got = list(kb)
  assert [e.id for e in got] == [0, 1, 2]
  assert [e.entity_id for e in got] == ["Q90", "Q456", "Q1"]
  assert got[0].url == "https://www.wikidata.org/wiki/Q90" and got[1].url is None
  # Written back, the file says what it said: ids as given, url only where it was.
  assert [e.to_json() for e in got] == QIDS
  assert jsonl.read_entities(path) == got
  # A view keeps its ids; Records.of keeps the ids of keyed entities.
  assert kb.subset([2, 0]).keys.tolist() == ["Q1", "Q90"]
  assert Records.of(got).keys.tolist() == ["Q90", "Q456", "Q1"]


def test_url_ids_are_kept_exactly(tmp_path):
  kb = jsonl.open_entities(_write(tmp_path / "kb.jsonl", URLS))
  assert [e.entity_id for e in kb] == [u["id"] for u in URLS]
  assert EntityIds.of(kb).label(URLS[1]["id"]) == 1


def test_integer_ids_are_the_labels_unchanged(tmp_path):
  objs = [{"id": 42, "title": "A", "text": ""}, {"id": 7, "title": "B", "text": "",
                                                 "url": "http://b"}]
  kb = jsonl.open_entities(_write(tmp_path / "kb.jsonl", objs))
  assert kb.labels.tolist() == [42, 7] and kb.keys is None
  assert list(kb) == [Entity(42, "A", ""), Entity(7, "B", "", url="http://b")]
  assert all(e.key is None for e in kb)
  assert not EntityIds.of(kb).keyed and EntityIds.of(kb).label(42) == 42
  assert EntityIds.of(kb).label(3) is None and EntityIds.of(kb).label("42") is None


def test_mixed_ids_keep_their_json_types(tmp_path):
  objs = [{"id": 42, "title": "int", "text": ""}, {"id": "42", "title": "str", "text": ""}]
  kb = jsonl.open_entities(_write(tmp_path / "kb.jsonl", objs))
  assert kb.labels.tolist() == [0, 1]
  assert [e.entity_id for e in kb] == [42, "42"]
  assert [type(e.entity_id) for e in kb] == [int, str]
  table = EntityIds.of(kb)
  assert (table.label(42), table.label("42"), table.label(True)) == (0, 1, None)
  ms = _write(tmp_path / "m.jsonl", [
      {"context_left": "", "mention": "a", "context_right": "", "label_id": "42"},
      {"context_left": "", "mention": "b", "context_right": "", "label_id": 42},
      {"context_left": "", "mention": "c", "context_right": "", "label_id": -1}])
  assert [m.label_id for m in jsonl.read_mentions(ms, catalogue_ids=table)] == [1, 0, -1]


def test_duplicate_string_id_is_one_line_naming_file_and_line(tmp_path):
  path = _write(tmp_path / "kb.jsonl", QIDS + [{"id": "Q456", "title": "Again", "text": ""}])
  with pytest.raises(DataError) as err:
    jsonl.open_entities(path)
  assert str(err.value) == f'{path}:4: duplicate entity id "Q456"'
  # Skipped, the catalogue keeps the first one and its labels stay in record order.
  kb = jsonl.open_entities(path, skip_bad=True)
  assert kb.keys.tolist() == ["Q90", "Q456", "Q1"] and kb.labels.tolist() == [0, 1, 2]


def test_mentions_and_documents_name_entities_by_string_id(tmp_path):
  kb = jsonl.open_entities(_write(tmp_path / "kb.jsonl", QIDS))
  table = EntityIds.of(kb)
  good = {"context_left": "I saw ", "mention": "Lyon", "context_right": ".",
          "label_id": "Q456"}
  path = _write(tmp_path / "m.jsonl", [good, {**good, "label_id": -1}])
  assert [m.label_id for m in jsonl.read_mentions(path, catalogue_ids=table)] == [1, -1]
  opened = jsonl.open_mentions(path, catalogue_ids=table)
  assert opened.labels.tolist() == [1, -1] and opened[0].label_id == 1
  # An id not in the catalogue is a one-line error naming file and line.
  bad = _write(tmp_path / "bad.jsonl", [good, {**good, "label_id": "Q7"}])
  with pytest.raises(DataError) as err:
    jsonl.read_mentions(bad, catalogue_ids=table)
  assert str(err.value) == f'{bad}:2: label_id "Q7" is not in the entity catalogue'
  # A string id cannot be read without its catalogue (only it knows the label).
  with pytest.raises(DataError, match=r':1: label_id "Q456" is a string id'):
    jsonl.read_mentions(path)
  doc = {"id": "d", "text": "Paris and Lyon.",
         "mentions": [{"start": 0, "end": 5, "label_id": "Q90"},
                      {"start": 10, "end": 14, "label_id": "Q3"}]}
  with pytest.raises(DataError) as err:
    jsonl.read_documents(_write(tmp_path / "d.jsonl", [doc]), catalogue_ids=table)
  assert str(err.value).endswith(':1: mentions[1]: label_id "Q3" is not in the entity '
                                 "catalogue")
  doc["mentions"][1]["label_id"] = "Q456"
  (read,) = jsonl.read_documents(_write(tmp_path / "d.jsonl", [doc]), catalogue_ids=table)
  assert [s.label_id for s in read.spans] == [0, 1]


def test_labels_for_decides_on_the_whole_catalogue():
  labels, keys = entity_ids.labels_for([3, 1, 2])
  assert labels.tolist() == [3, 1, 2] and keys is None
  labels, keys = entity_ids.labels_for([3, "x", 2])
  assert labels.tolist() == [0, 1, 2] and keys == [3, "x", 2]
  assert entity_ids.show(42) == "42" and entity_ids.show("42") == '"42"'
  assert np.asarray(entity_ids.labels_for([])[0]).size == 0
