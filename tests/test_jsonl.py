"""BLINK jsonl readers and writers: round trips, every error with its file:line, skip counts."""

import collections
import json
import logging
import os
from pathlib import Path

import pytest

from blink_jax.data import jsonl
from blink_jax.data.jsonl import (DataError, Document, Entity, Mention, ReadStats, Span,
                                  read_documents, read_entities, read_mentions, write_jsonl)

WIKIEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikiel"


def write_lines(path: Path, lines: list) -> Path:
  """Raw test file: str items are written as-is, anything else as JSON; bytes verbatim."""
  with open(path, "wb") as f:
    for line in lines:
      if isinstance(line, bytes):
        f.write(line + b"\n")
      else:
        text = line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)
        f.write(text.encode("utf-8") + b"\n")
  return path


GOOD_ENTITY = {"id": 0, "title": "Varn", "text": "A river."}
GOOD_MENTION = {"context_left": "By the ", "mention": "Varn", "context_right": ".",
                "label_id": 0}
GOOD_DOC = {"id": "d0", "text": "Varn runs.", "mentions": [{"start": 0, "end": 4, "label_id": 0}]}


# ------------------------------------------------------------------------------ round trips


def test_round_trip_all_record_types(tmp_path):
  entities = [Entity(0, "Varn (river)", "Flows past Kelos. Ünïcode ✓."),
              Entity(7, "Varn Oskel", "A smith.\nSecond line.", world="kaste")]
  mentions = [Mention("left ", "Varn", " right", 7, world="kaste", id="m-1",
                      label_title="Varn Oskel"),
              Mention("", "Oskel", "", -1),
              Mention("a", "b", "c", 0, id=3)]
  docs = [Document("d1", "Varn met Oskel.", (Span(0, 4, 0, "Varn (river)", "Varn"),
                                             Span(9, 14, None, "Varn Oskel", "Oskel")),
                   world="kaste"),
          Document(2, "Nothing here.", ())]
  assert write_jsonl(tmp_path / "e.jsonl", entities) == 2
  write_jsonl(tmp_path / "m.jsonl", [jsonl.to_json(m) for m in mentions])
  write_jsonl(tmp_path / "d.jsonl", docs)
  assert read_entities(tmp_path / "e.jsonl") == entities
  assert read_mentions(tmp_path / "m.jsonl", catalogue_ids={0, 7}) == mentions
  assert read_documents(tmp_path / "d.jsonl", catalogue_ids={0, 7}) == docs


def test_to_json_formats_are_exact():
  assert jsonl.to_json(Entity(1, "T", "x")) == {"id": 1, "title": "T", "text": "x"}
  assert jsonl.to_json(Mention("l", "m", "r", 4)) == {
      "context_left": "l", "mention": "m", "context_right": "r", "label_id": 4}
  doc = Document("d", "ab", (Span(0, 1, 3, None, "a"),), world="w")
  assert jsonl.to_json(doc) == {"id": "d", "text": "ab", "world": "w",
                                "mentions": [{"start": 0, "end": 1, "mention": "a",
                                              "label_id": 3}]}


def test_reader_accepts_extra_keys_blank_lines_and_fills_span_mention(tmp_path):
  path = write_lines(tmp_path / "d.jsonl", [
      "", "   ",
      {**GOOD_DOC, "dataset": "x", "mentions": [{"start": 0, "end": 4, "label_title": "Varn"}]},
  ])
  (doc,) = read_documents(path)
  assert doc.spans == (Span(0, 4, None, "Varn", "Varn"),)


def test_nil_label_is_kept_even_with_catalogue(tmp_path):
  path = write_lines(tmp_path / "m.jsonl", [{**GOOD_MENTION, "label_id": -1}])
  assert read_mentions(path, catalogue_ids={0})[0].label_id == -1


# ---------------------------------------------------------------------------------- errors

BAD_ENTITY_LINES = {
    "invalid_utf8": b'{"id": 1, "title": "\xff", "text": ""}',
    "not_json": '{"id": 1, "title": ',
    "not_object": "[1, 2]",
    "missing_field": {"id": 1, "title": "T"},
    "bad_field": {"id": 1.5, "title": "T", "text": ""},
    "bool_id": {"id": True, "title": "T", "text": ""},
    "negative_id": {"id": -3, "title": "T", "text": ""},
    "empty_id": {"id": " ", "title": "T", "text": ""},
    "bad_url": {"id": 1, "title": "T", "text": "", "url": 7},
    "duplicate_id": {"id": 0, "title": "Again", "text": ""},
}
EXPECTED_TEXT = {"invalid_utf8": "invalid UTF-8", "not_json": "not valid JSON",
                 "not_object": "expected a JSON object", "missing_field": "missing field 'text'",
                 "bad_field": "field 'id' must be int or str, got float",
                 "bool_id": "field 'id' must be int or str, got bool",
                 "negative_id": "must be >= 0", "empty_id": "entity id must not be empty",
                 "bad_url": "field 'url' must be str", "duplicate_id": "duplicate entity id 0"}


@pytest.mark.parametrize("kind", sorted(BAD_ENTITY_LINES))
def test_entity_errors_name_file_and_line(tmp_path, kind):
  # Line 1 good, line 2 blank (still counted as a line), line 3 bad.
  path = write_lines(tmp_path / "e.jsonl", [GOOD_ENTITY, "", BAD_ENTITY_LINES[kind]])
  with pytest.raises(DataError) as err:
    read_entities(path)
  assert str(err.value).startswith(f"{path}:3: ")
  assert EXPECTED_TEXT[kind] in str(err.value)


@pytest.mark.parametrize("line, expected", [
    ({**GOOD_MENTION, "label_id": 5}, "label_id 5 is not in the entity catalogue"),
    ({**GOOD_MENTION, "label_id": None}, "field 'label_id' must be int"),
    ({k: v for k, v in GOOD_MENTION.items() if k != "mention"}, "missing field 'mention'"),
    ({**GOOD_MENTION, "world": 3}, "field 'world' must be str"),
])
def test_mention_errors(tmp_path, line, expected):
  path = write_lines(tmp_path / "m.jsonl", [GOOD_MENTION, line])
  with pytest.raises(DataError, match=expected) as err:
    read_mentions(path, catalogue_ids={0})
  assert str(err.value).startswith(f"{path}:2: ")


@pytest.mark.parametrize("span, expected", [
    ({"start": 0, "end": 11, "label_id": 0}, r"span \[0, 11\) is empty or outside"),
    ({"start": -1, "end": 2, "label_id": 0}, "outside the text"),
    ({"start": 3, "end": 3, "label_id": 0}, "is empty"),
    ({"start": 0, "end": 4, "label_id": 0, "mention": "Varm"}, "does not match text"),
    ({"start": 0, "end": 4, "label_id": 9}, "label_id 9 is not in the entity catalogue"),
    ({"start": 0, "end": 4}, "needs 'label_id' or 'label_title'"),
    ({"start": "0", "end": 4, "label_id": 0}, "field 'start' must be int"),
    ("not a span", "must be an object"),
])
def test_document_errors(tmp_path, span, expected):
  bad = {**GOOD_DOC, "mentions": [GOOD_DOC["mentions"][0], span]}
  path = write_lines(tmp_path / "d.jsonl", [GOOD_DOC, GOOD_DOC, bad])
  with pytest.raises(DataError, match=expected) as err:
    read_documents(path, catalogue_ids={0})
  assert str(err.value).startswith(f"{path}:3: mentions[1]: ")


def test_skip_bad_counts_and_warns(tmp_path, caplog):
  path = write_lines(tmp_path / "e.jsonl", [
      GOOD_ENTITY, BAD_ENTITY_LINES["not_json"], {"id": 1, "title": "B", "text": ""},
      BAD_ENTITY_LINES["invalid_utf8"], BAD_ENTITY_LINES["duplicate_id"],
      BAD_ENTITY_LINES["not_json"]])
  stats = ReadStats()
  with caplog.at_level(logging.WARNING, logger=jsonl.__name__):
    got = read_entities(path, skip_bad=True, stats=stats)
  assert [e.id for e in got] == [0, 1]
  assert (stats.read, stats.skipped) == (2, 4)
  assert stats.reasons == collections.Counter(not_json=2, invalid_utf8=1, duplicate_id=1)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  # One warning per skipped line, naming its file and line, then the file's summary.
  assert warnings[:4] == [
      f"{path}:2: not valid JSON (Expecting value at column 1) (not_json); line skipped",
      f"{path}:4: invalid UTF-8 at byte 20 (invalid_utf8); line skipped",
      f"{path}:5: duplicate entity id 0 (duplicate_id); line skipped",
      f"{path}:6: not valid JSON (Expecting value at column 1) (not_json); line skipped"]
  assert len(warnings) == 5 and warnings[4].startswith(f"{path}: skipped 4 bad line(s)")


def test_skip_bad_without_stats_still_returns_list(tmp_path):
  path = write_lines(tmp_path / "m.jsonl", [GOOD_MENTION, "oops", GOOD_MENTION])
  assert len(read_mentions(path, skip_bad=True)) == 2
  with pytest.raises(DataError, match=":2: "):
    read_mentions(path)


# ---------------------------------------------------------------------------------- writing


def test_write_jsonl_is_atomic_on_failure(tmp_path):
  path = tmp_path / "e.jsonl"
  write_jsonl(path, [GOOD_ENTITY])
  before = path.read_bytes()

  def records():
    yield {"id": 5, "title": "half", "text": ""}
    raise RuntimeError("interrupted")

  with pytest.raises(RuntimeError):
    write_jsonl(path, records())
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["e.jsonl"]  # No temp file left behind.


# --------------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not WIKIEL.is_dir(), reason=f"{WIKIEL} not present")
def test_reads_wikiel_exactly():
  entities = read_entities(WIKIEL / "entities.jsonl")
  assert len(entities) == 13_929
  ids = {e.id for e in entities}
  expected = {"KORE50": 144, "oke_2015": 536, "oke_2016": 288}
  for name, count in expected.items():
    mentions = read_mentions(WIKIEL / f"{name}.mentions.jsonl", catalogue_ids=ids)
    docs = read_documents(WIKIEL / f"{name}.docs.jsonl", catalogue_ids=ids)
    assert len(mentions) == count
    assert sum(len(d.spans) for d in docs) == count
    assert all(d.text[s.start:s.end] == s.mention for d in docs for s in d.spans)
