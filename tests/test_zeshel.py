"""Zeshel conversion and tfds build on a tiny raw-format fixture: exact contexts, ids, caching,
and every bad-record kind with its file:line. No TensorFlow anywhere."""

import json
import logging
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from blink_jax.data import zeshel
from blink_jax.data.jsonl import DataError, Entity, Mention, ReadStats

tfds.display_progress_bar(False)

LONG = [f"w{i}" for i in range(300)]
LONG[150:152] = ["Joe", "Montana"]

# world -> [(document_id, title, text)]; global ids follow zeshel.ALL_WORLDS order.
DOCS = {
    "american_football": [  # ids 0, 1, 2
        ("AF0", "Joe Montana", "Joe Montana was a quarterback for the San Francisco 49ers ."),
        ("AF1", "San Francisco 49ers", "The San Francisco 49ers are a team ."),
        ("AF2", "Long game", " ".join(LONG)),
    ],
    "doctor_who": [  # ids 3, 4, 5
        ("DW0", "The Doctor", "The Doctor is a Time Lord ."),
        ("DW1", "TARDIS", "The TARDIS is the Doctor 's ship ."),
        ("DW2", "Dalek", "Daleks hate the Doctor ."),
    ],
    "coronation_street": [  # ids 6, 7, 8
        ("CS0", "Ken Barlow", "Ken Barlow lives on the Street ."),
        ("CS1", "Rovers Return", "The Rovers Return Inn is a pub ."),
        ("CS2", "Weatherfield", "Weatherfield is a town ."),
    ],
    "forgotten_realms": [  # ids 9, 10, 11
        ("FR0", "Drizzt Do'Urden", "Drizzt Do'Urden is a drow ranger ."),
        ("FR1", "Waterdeep", "Waterdeep , City of Splendors ."),
        ("FR2", "Elminster", "Elminster of Shadowdale met Drizzt in Waterdeep ."),
    ],
}


def mention(mid, world, context, label, start, end, text):
  return {"mention_id": mid, "context_document_id": context, "label_document_id": label,
          "start_index": start, "end_index": end, "text": text, "corpus": world,
          "category": "LOW_OVERLAP"}


MENTIONS = {
    "train": [
        mention("m1", "american_football", "AF1", "AF1", 1, 3, "San Francisco 49ers"),
        mention("m2", "american_football", "AF2", "AF0", 150, 151, "joe montana"),
        mention("m3", "american_football", "AF0", "AF0", 0, 1, "Joe Montana"),
        mention("m4", "doctor_who", "DW1", "DW0", 4, 4, "Doctor"),
    ],
    "val": [mention("v1", "coronation_street", "CS2", "CS2", 0, 0, "Weatherfield")],
    "test": [mention("t1", "forgotten_realms", "FR2", "FR1", 6, 6, "Waterdeep"),
             mention("t2", "forgotten_realms", "FR2", "FR0", 4, 4, "Drizzt")],
}


def write_raw(root: Path, insert: tuple[str, int, str | bytes] | None = None) -> Path:
  """The fixture in Zeshel's raw layout; `insert` = (relative file, line number, raw line)."""
  files = {f"documents/{w}.json": [{"title": t, "text": x, "document_id": d} for d, t, x in docs]
           for w, docs in DOCS.items()}
  files.update({f"mentions/{s}.json": lines for s, lines in MENTIONS.items()})
  for rel, lines in files.items():
    raw = [json.dumps(line).encode() for line in lines]
    if insert and insert[0] == rel:
      bad = insert[2] if isinstance(insert[2], bytes) else insert[2].encode()
      raw.insert(insert[1] - 1, bad)
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"\n".join(raw) + b"\n")
  return root


@pytest.fixture
def raw(tmp_path):
  return write_raw(tmp_path / "raw")


def converted(raw_dir, **kwargs):
  out = zeshel.convert(raw_dir, **kwargs)
  return {kind: {s: list(it) for s, it in per_split.items()} for kind, per_split in out.items()}


# ------------------------------------------------------------------------------- conversion


def test_contexts_are_exact(raw):
  train = converted(raw)["mentions"]["train"]
  assert train[0] == Mention("The", "San Francisco 49ers", "are a team .", 1,
                             world="american_football", id="m1",
                             label_title="San Francisco 49ers")
  # 150 tokens on the left and 148 on the right: both cut to 128; the surface keeps its case.
  assert train[1] == Mention(" ".join(f"w{i}" for i in range(22, 150)), "Joe Montana",
                             " ".join(f"w{i}" for i in range(152, 280)), 0,
                             world="american_football", id="m2", label_title="Joe Montana")
  assert len(train[1].context_left.split(" ")) == len(train[1].context_right.split(" ")) == 128
  assert train[2].context_left == "" and train[2].context_right == (
      "was a quarterback for the San Francisco 49ers .")
  assert (train[3].context_left, train[3].mention, train[3].context_right) == (
      "The TARDIS is the", "Doctor", "'s ship .")


def test_ids_titles_and_world_pools(raw):
  out = converted(raw)
  entities, mentions = out["entities"], out["mentions"]
  assert [e.id for s in zeshel.SPLITS for e in entities[s]] == list(range(12))
  assert entities["train"][2] == Entity(2, "Long game", " ".join(LONG), "american_football")
  by_id = {e.id: e for s in zeshel.SPLITS for e in entities[s]}
  assert [(m.label_id, by_id[m.label_id].title) for m in mentions["train"]] == [
      (1, "San Francisco 49ers"), (0, "Joe Montana"), (0, "Joe Montana"), (3, "The Doctor")]
  assert [(m.label_id, by_id[m.label_id].title) for m in mentions["test"]] == [
      (10, "Waterdeep"), (9, "Drizzt Do'Urden")]
  for split in zeshel.SPLITS:
    pool = {e.world for e in entities[split]}
    assert pool <= set(zeshel.WORLDS[split])
    assert {m.world for m in mentions[split]} <= pool
    assert all(m.label_title == by_id[m.label_id].title for m in mentions[split])
    assert all(by_id[m.label_id].world == m.world for m in mentions[split])
  assert {e.world for e in entities["train"]} == {"american_football", "doctor_who"}
  train_worlds = set(zeshel.WORLDS["train"])
  assert not train_worlds & set(zeshel.WORLDS["val"]) and not train_worlds & set(
      zeshel.WORLDS["test"]) and not set(zeshel.WORLDS["val"]) & set(zeshel.WORLDS["test"])


# ----------------------------------------------------------------------------- tfds build


def test_load_zeshel_builds_once_and_matches_convert(raw, tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  expected = converted(raw)
  for split in zeshel.SPLITS:
    entities, mentions = zeshel.load_zeshel(raw, data_dir, split)
    assert list(entities) == expected["entities"][split]
    assert list(mentions) == expected["mentions"][split]
    # Columns in memory, records read by row.
    assert list(entities.labels) == [e.id for e in expected["entities"][split]]
    assert list(mentions.worlds) == [m.world for m in expected["mentions"][split]]
    last = len(mentions) - 1
    assert mentions.take([last, 0]) == [expected["mentions"][split][last],
                                        expected["mentions"][split][0]]
  built = sorted(data_dir.glob("zeshel/*/1.0.0/*.array_record-*"))
  assert len(built) == 6  # 2 configs x 3 splits.
  mtimes = [p.stat().st_mtime_ns for p in built]

  def no_rebuild(*args, **kwargs):
    raise AssertionError("rebuilt a prepared dataset")
  monkeypatch.setattr(zeshel, "convert", no_rebuild)
  entities, mentions = zeshel.load_zeshel(raw, data_dir, "test")
  assert (list(entities), list(mentions)) == (expected["entities"]["test"],
                                              expected["mentions"]["test"])
  assert not zeshel.prepare_zeshel(raw, data_dir)
  assert [p.stat().st_mtime_ns for p in built] == mtimes
  # The registered builder reads by name, with random access.
  source = tfds.data_source("zeshel/mentions", split="train", data_dir=data_dir)
  assert len(source) == 4 and source[1]["mention"] == b"Joe Montana"
  assert "tensorflow" not in sys.modules


def test_failed_build_leaves_nothing_then_skip_bad_builds(tmp_path):
  raw = write_raw(tmp_path / "raw",
                  ("mentions/val.json", 1, json.dumps(mention("x", "muppets", "CS0", "CS0",
                                                              0, 0, "Ken"))))
  data_dir = tmp_path / "tfds"
  with pytest.raises(DataError) as info:  # tfds passes the error through unchanged.
    zeshel.load_zeshel(raw, data_dir, "val")
  assert str(info.value) == (f"{raw / 'mentions/val.json'}:1: context document 'CS0' not found "
                             "in muppets documents")
  assert not zeshel.Zeshel(config="mentions", data_dir=data_dir).is_prepared()
  stats = ReadStats()
  _, mentions = zeshel.load_zeshel(raw, data_dir, "val", skip_bad=True, stats=stats)
  assert [m.id for m in mentions] == ["v1"]
  assert stats.skipped == 1 and stats.reasons == {"document_not_found": 1}
  assert "tensorflow" not in sys.modules


def test_missing_files_and_bad_split(raw, tmp_path):
  with pytest.raises(ValueError, match="split must be one of"):
    zeshel.load_zeshel(raw, tmp_path / "tfds", "valid")
  (raw / "mentions" / "test.json").unlink()
  with pytest.raises(FileNotFoundError, match="mentions/test.json"):
    zeshel.convert(raw)
  write_raw(raw)
  (raw / "documents" / "forgotten_realms.json").unlink()
  with pytest.raises(FileNotFoundError, match="no documents for any test world"):
    zeshel.convert(raw)


# ------------------------------------------------------------------------------ bad records

M = "mentions/train.json"
D = "documents/doctor_who.json"
BAD = {  # kind -> (file, raw line inserted as line 2, reason, message fragment)
    "doc_utf8": (D, b'{"title": "\xff"}', "invalid_utf8", "invalid UTF-8"),
    "doc_json": (D, '{"title": ', "not_json", "not valid JSON"),
    "doc_missing": (D, json.dumps({"text": "x", "document_id": "DW9"}), "missing_field",
                    "missing field 'title'"),
    "doc_duplicate": (D, json.dumps({"title": "x", "text": "x", "document_id": "DW0"}),
                      "duplicate_id", "duplicate document_id 'DW0'"),
    "utf8": (M, b'{"text": "\xc3"}', "invalid_utf8", "invalid UTF-8"),
    "json": (M, "[1, 2", "not_json", "not valid JSON"),
    "not_object": (M, "[1, 2]", "not_object", "expected a JSON object"),
    "missing": (M, json.dumps({k: v for k, v in MENTIONS["train"][0].items()
                               if k != "start_index"}), "missing_field",
                "missing field 'start_index'"),
    "type": (M, json.dumps({**MENTIONS["train"][0], "end_index": "3"}), "bad_field",
             "field 'end_index' must be int"),
    "context": (M, json.dumps({**MENTIONS["train"][0], "context_document_id": "DW0"}),
                "document_not_found", "context document 'DW0' not found in american_football"),
    "label": (M, json.dumps({**MENTIONS["train"][0], "label_document_id": "nope"}),
              "document_not_found", "label document 'nope' not found"),
    "wrong_world": (M, json.dumps(mention("x", "lego", "FR0", "FR0", 0, 0, "Drizzt")),
                    "world_not_in_split", "corpus 'lego' is not a train world"),
    "start_after_end": (M, json.dumps(mention("x", "doctor_who", "DW0", "DW0", 2, 1, "is a")),
                        "bad_span", "start_index 2 > end_index 1"),
    "end_outside": (M, json.dumps(mention("x", "doctor_who", "DW2", "DW2", 4, 5, ". x")),
                    "bad_span", "span [4, 5] is outside the context document (5 tokens)"),
    "negative": (M, json.dumps(mention("x", "doctor_who", "DW2", "DW2", -1, 0, "Daleks")),
                 "bad_span", "span [-1, 0] is outside"),
    "mismatch": (M, json.dumps(mention("x", "doctor_who", "DW2", "DW2", 0, 1, "Daleks love")),
                 "mention_mismatch", "does not match tokens[0:2] = 'Daleks hate'"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_record_names_file_and_line(kind, tmp_path, caplog):
  rel, line, reason, fragment = BAD[kind]
  raw = write_raw(tmp_path / kind, (rel, 2, line))
  with pytest.raises(DataError) as info:
    converted(raw)
  assert str(info.value).startswith(f"{raw / rel}:2: ")
  assert fragment in str(info.value) and info.value.reason == reason

  stats = ReadStats()
  with caplog.at_level(logging.WARNING, logger=zeshel.__name__):
    out = converted(raw, skip_bad=True, stats=stats)
  assert stats.skipped == 1 and stats.reasons == {reason: 1}
  assert f"{raw / rel}: skipped 1 bad line(s) ({reason}=1)" in caplog.text
  # Each skipped line is named by file and line.
  named = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{raw / rel}:2: ")]
  assert len(named) == 1 and fragment in named[0] and named[0].endswith("line skipped")
  # The good records are untouched: same ids, same mentions.
  assert out == converted(write_raw(tmp_path / "clean"))
  assert "tensorflow" not in sys.modules


# -------------------------------------------------------------------------------- documents


def test_documents_cover_the_mentions_with_their_ids(raw):
  docs = zeshel.read_documents(raw)
  mentions = converted(raw)["mentions"]
  texts = {d: x for per_world in DOCS.values() for d, _, x in per_world}
  # One document per context document, in order of first appearance in the mentions file.
  assert [(d.id, d.world) for d in docs["train"]] == [
      ("AF1", "american_football"), ("AF2", "american_football"), ("AF0", "american_football"),
      ("DW1", "doctor_who")]
  assert [(d.id, d.world) for d in docs["val"]] == [("CS2", "coronation_street")]
  assert [(d.id, d.world) for d in docs["test"]] == [("FR2", "forgotten_realms")]
  for split in zeshel.SPLITS:
    spans = {}
    for doc in docs[split]:
      assert doc.text == texts[doc.id]
      assert list(doc.spans) == sorted(doc.spans, key=lambda s: s.start)
      for s in doc.spans:
        assert doc.text[s.start:s.end] == s.mention
        spans[doc.id, s.mention] = (s.label_id, s.label_title)
    # The raw lines, matched to the converted mention records line for line.
    raw_lines = MENTIONS[split]
    assert len(spans) == len(raw_lines) == len(mentions[split])
    for line, m in zip(raw_lines, mentions[split]):
      assert line["text"].lower() == m.mention.lower()
      assert spans[line["context_document_id"], m.mention] == (m.label_id, m.label_title)
  # The 2-mention test document: exact offsets, spans in text order (the file lists them
  # the other way round).
  fr2 = docs["test"][0]
  assert [(s.start, s.end, s.mention, s.label_id) for s in fr2.spans] == [
      (28, 34, "Drizzt", 9), (38, 47, "Waterdeep", 10)]
  assert docs["train"][1].spans[0].mention == "Joe Montana"  # The text's case, not the line's.


def test_documents_splits_and_mismatch(raw, tmp_path):
  assert list(zeshel.read_documents(raw, ["val"])) == ["val"]
  with pytest.raises(ValueError, match="splits must be among"):
    zeshel.read_documents(raw, ["valid"])
  bad = write_raw(tmp_path / "bad", BAD["mismatch"][:1] + (2, BAD["mismatch"][1]))
  path = bad / "mentions/train.json"
  with pytest.raises(DataError, match=f"^{path}:2: mention text 'Daleks love' does not match "
                     r"tokens\[0:2\] = 'Daleks hate'$") as info:
    zeshel.read_documents(bad)
  assert info.value.reason == "mention_mismatch"
  stats = ReadStats()
  skipped = zeshel.read_documents(bad, skip_bad=True, stats=stats)
  assert stats.reasons == {"mention_mismatch": 1}
  assert skipped == zeshel.read_documents(raw)  # The bad line is dropped, nothing else.


def test_blank_span_is_refused(tmp_path):
  raw = write_raw(tmp_path / "raw")
  lines = (raw / "documents/doctor_who.json").read_text().splitlines()
  lines[2] = json.dumps({"title": "Dalek", "text": "Daleks  hate", "document_id": "DW2"})
  (raw / "documents/doctor_who.json").write_text("\n".join(lines) + "\n")
  write = (raw / "mentions/train.json").read_text()
  (raw / "mentions/train.json").write_text(
      write + json.dumps(mention("x", "doctor_who", "DW2", "DW2", 1, 1, "")) + "\n")
  with pytest.raises(DataError, match=r"train.json:5: tokens\[1:2\] cover no text"):
    zeshel.read_documents(raw)


def test_sources_load_zeshel_documents(raw, tmp_path):
  from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  config = base.get_config()
  config.data.kind = "zeshel"
  config.data.zeshel_dir = str(raw)
  config.data.tfds_dir = str(tmp_path / "tfds")
  assert not sources.load(config, str(tmp_path / "work")).train_documents  # Only on request.
  data = sources.load(config, str(tmp_path / "work"), documents=True)
  docs = zeshel.read_documents(raw)
  assert data.train_documents == docs["train"]
  assert data.eval_documents == {"val": docs["val"], "test": docs["test"]}
  assert sorted(s.label_id for d in data.train_documents for s in d.spans) == sorted(
      data.train.labels.tolist())
  # A catalogue built from another release (here: one document fewer) is refused.
  lines = (raw / "documents/american_football.json").read_text().splitlines()
  (raw / "documents/american_football.json").write_text("\n".join(lines[1:]) + "\n")
  (raw / "mentions/train.json").write_text("".join(
      json.dumps(m) + "\n" for m in MENTIONS["train"] if m["label_document_id"] != "AF0"))
  with pytest.raises(DataError, match="disagree with the built catalogue"):
    sources.load(config, str(tmp_path / "work"), documents=True)
