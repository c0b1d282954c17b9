"""A trained linker against catalogues of string ids: the same links, named as given."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from blink_jax import evaluate
from blink_jax.data import jsonl
from blink_jax.data.entity_ids import EntityIds
from blink_jax.inference import linker as linker_lib
from conftest import private_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["Later that year, Gegwe was often seen near the river.",
         "It was said that Gegwe had always been faithful."]


def qid(i: int) -> str:
  return f"Q{i}"


def url(i: int) -> str:
  return f"https://kb.example.org/wiki/{i}"


@pytest.fixture(scope="module")
def catalogues(linked, tmp_path_factory):
  """The demo's catalogue twice: with its integer ids, and with QIDs and urls; and its
  test documents, their gold named by QID. Paths, and the integer catalogue's entities."""
  _, workdir, _ = linked
  d = tmp_path_factory.mktemp("ids")
  data = os.path.join(workdir, "data")
  with open(os.path.join(data, "entities.jsonl"), encoding="utf-8") as f:
    ints = [json.loads(line) for line in f]
  # Reversed as well: a QID catalogue's labels are its line order, unrelated to the ids.
  qids = [{**e, "id": qid(e["id"]), "url": url(e["id"])} for e in reversed(ints)]
  jsonl.write_jsonl(d / "ints.jsonl", ints)
  jsonl.write_jsonl(d / "qids.jsonl", qids)
  with open(os.path.join(data, "test.docs.jsonl"), encoding="utf-8") as f:
    docs = [json.loads(line) for line in f]
  for doc in docs:
    for m in doc["mentions"]:
      if m.get("label_id", -1) != -1:
        m["label_id"] = qid(m["label_id"])
  jsonl.write_jsonl(d / "qdocs.jsonl", docs)
  return d, {e["id"]: e for e in ints}


def _load(workdir, dst, entities, **kwargs):
  return linker_lib.Linker.load(str(private_workdir(workdir, dst)), entities=str(entities),
                                **kwargs)


def test_string_ids_link_as_the_integer_ones_and_come_back_as_given(linked, catalogues,
                                                                     tmp_path):
  _, workdir, _ = linked
  d, by_id = catalogues
  every_span = {"linker.mention_threshold": -1e9}
  ints = _load(workdir, tmp_path / "a", d / "ints.jsonl", overrides=every_span)
  qids = _load(workdir, tmp_path / "b", d / "qids.jsonl", overrides=every_span)
  assert EntityIds.of(qids.entities).keyed and not EntityIds.of(ints.entities).keyed
  got_i, got_q = ints.link(TEXTS), qids.link(TEXTS)
  assert sum(map(len, got_i)) >= 4
  for spans_i, spans_q in zip(got_i, got_q):
    assert len(spans_i) == len(spans_q)
    for a, b in zip(spans_i, spans_q):
      i = a["entity_id"]
      assert type(i) is int and b["entity_id"] == qid(i)  # The QID, not a label.
      assert b["url"] == url(i) and "url" not in a  # Only a catalogue with urls has them.
      assert a["title"] == b["title"] == by_id[i]["title"]
      assert {k: v for k, v in b.items() if k not in ("entity_id", "url", "score")} == {
          k: v for k, v in a.items() if k not in ("entity_id", "score")}
      np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)
      assert list(b) == ["start", "end", "mention", "entity_id", "title", "url", "score",
                         "nil"]
  # Full mode re-ranks with the cross-encoder, which reads entities by label.
  ms = [linker_lib.mention_of(TEXTS[1], r["start"], r["end"], 64) for r in got_i[1]]
  full_i = ints.disambiguate(ms, mode="full")
  full_q = qids.disambiguate(ms, mode="full")
  assert [qid(r["entity_id"]) for r in full_i] == [r["entity_id"] for r in full_q]


def test_documents_named_by_string_id_score_as_the_integer_ones(linked, catalogues,
                                                                tmp_path):
  _, workdir, _ = linked
  d, _ = catalogues
  # Every span kept: the small demo linker then links some gold spans right.
  every_span = {"linker.mention_threshold": -1e9}
  ints = _load(workdir, tmp_path / "a", d / "ints.jsonl", overrides=every_span)
  qids = _load(workdir, tmp_path / "b", d / "qids.jsonl", overrides=every_span)
  docs_i = jsonl.read_documents(os.path.join(workdir, "data", "test.docs.jsonl"))
  docs_q = jsonl.read_documents(d / "qdocs.jsonl", catalogue_ids=EntityIds.of(qids.entities))
  want = evaluate.documents_report(ints, docs_i, "fast")
  got = evaluate.documents_report(qids, docs_q, "fast")
  assert want["linking/strong/tp_gold"] > 0  # Something links, so the ids are compared.
  assert got == want
  # The CLI: QIDs and urls in its output, and --evaluate reads the QIDs of the input.
  out = tmp_path / "linked.jsonl"
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  proc = subprocess.run(
      [sys.executable, "-m", "blink_jax.link", f"--workdir={tmp_path / 'b'}",
       f"--entities={d / 'qids.jsonl'}", f"--input={d / 'qdocs.jsonl'}", f"--output={out}",
       "--evaluate", "--mention_threshold=-1e9", "--use_worlds"],  # As documents_report.
      capture_output=True, text=True, env=env, cwd=REPO, timeout=600, stdin=subprocess.DEVNULL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
  linked_ids = [e["entity_id"] for x in lines for e in x["entities"]]
  assert linked_ids and all(isinstance(i, str) and i.startswith("Q") for i in linked_ids)
  assert all(e["url"] == url(int(e["entity_id"][1:])) for x in lines for e in x["entities"])
  with open(tmp_path / "b" / "metrics.json", encoding="utf-8") as f:
    report = json.load(f)["link/qdocs/fast"]
  for key in ("linking/strong/f1", "linking/weak/f1", "mention_detection/strong/f1"):
    assert report[key] == pytest.approx(want[key])
