"""The spaCy component: doc.ents and kb_id_ from the trained linker, on spacy.blank("en")."""

import os
import subprocess
import sys

import pytest

spacy = pytest.importorskip("spacy")

# pylint: disable=wrong-import-position
from blink_jax import spacy_component
from blink_jax.inference import linker as linker_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["Later that year, Gegwe was often seen near the river.",
         "It was said that Gegwe had always been faithful.",
         "Nothing happened."]


# ------------------------------------------------------------ alignment, by hand
def test_spans_become_whole_tokens_and_overlaps_are_left_out():
  doc = spacy.blank("en")("The U.S. met Ann-Marie in Q-town.")
  start = doc.text.index
  results = [
      # Inside the token "U.S.": expanded to it.
      {"start": start("U"), "end": start("U") + 1, "entity_id": "Q30", "nil": False},
      # The same token again: overlaps the span kept before it, left out.
      {"start": start("S."), "end": start("S.") + 1, "entity_id": 7, "nil": False},
      {"start": start("met"), "end": start("met") + 3, "entity_id": 42, "nil": False},
      {"start": start("Q-town"), "end": start("Q-town") + 6, "entity_id": "Q9", "nil": True},
  ]
  spans = spacy_component.spans_for(doc, list(reversed(results)), "ENTITY")
  assert [(s.text, s.kb_id_, s.label_) for s in spans] == [
      ("U.S.", "Q30", "ENTITY"), ("met", "42", "ENTITY"), ("Q-town", "NIL", "ENTITY")]
  doc.ents = spans
  # The result rides on the spans doc.ents gives back, with the linker's own offsets.
  assert [e._.blink_jax for e in doc.ents] == [results[0], results[2], results[3]]


# ------------------------------------------------------------------ the entry point
def test_spacy_finds_the_factory_through_the_entry_point(tmp_path):
  """setup.py's `spacy_factories` entry point, as an install writes it, is how spaCy finds
  the component in a process that never imports blink_jax."""
  egg = tmp_path / "egg"
  egg.mkdir()
  made = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert made.returncode == 0, made.stderr[-2000:]
  probe = (
      "import sys, spacy\n"
      "nlp = spacy.blank('en')\n"
      "try:\n"
      "  nlp.add_pipe('blink_jax_linker', config={'workdir': '/no/such/workdir'})\n"
      "except FileNotFoundError as e:\n"
      "  print(e)\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(egg), REPO])}
  run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  # The component's own error: spaCy found it, built it, and it looked for a linker there.
  assert "No linker in /no/such/workdir" in run.stdout


# ----------------------------------------------------------- with a trained linker
def _nlp(workdir: str, **config) -> "spacy.language.Language":
  nlp = spacy.blank("en")
  nlp.add_pipe("blink_jax_linker", config={"workdir": workdir, **config})
  return nlp


def test_ents_are_the_linkers_spans(linked):
  _, workdir, _ = linked
  # Every span is kept (threshold -1e9): many spans to compare, NIL ones among them.
  nlp = _nlp(workdir, mention_threshold=-1e9, batch_size=2)
  docs = list(nlp.pipe(TEXTS))
  want = linker_lib.Linker.load(
      workdir, overrides={"linker.mention_threshold": -1e9}).link(TEXTS)
  assert sum(map(len, want)) >= 4
  for doc, found in zip(docs, want):
    assert [r["entity_id"] for r in doc._.blink_jax] == [r["entity_id"] for r in found]
    assert [r["score"] for r in doc._.blink_jax] == pytest.approx([r["score"] for r in found])
    # The demo's texts tokenize alike in spaCy and BERT: every span is an entity as it is.
    assert len(doc.ents) == len(found)
    for ent, r in zip(doc.ents, found):
      assert (ent.start_char, ent.end_char, ent.text) == (r["start"], r["end"], r["mention"])
      assert ent.label_ == "ENTITY"
      assert ent.kb_id_ == ("NIL" if r["nil"] else str(r["entity_id"]))
      assert ent._.blink_jax["entity_id"] == r["entity_id"]
      assert ent._.blink_jax["title"] == r["title"]
  # One text at a time (nlp(text)) is the same as a batch.
  one = nlp(TEXTS[0])
  assert [(e.start_char, e.kb_id_) for e in one.ents] == [
      (e.start_char, e.kb_id_) for e in docs[0].ents]


def test_bring_your_own_ner_links_exactly_the_given_ents(linked):
  _, workdir, _ = linked
  nlp = spacy.blank("en")
  # A rule-based NER upstream: its spans, not the linker's, are the mentions.
  ruler = nlp.add_pipe("entity_ruler")
  ruler.add_patterns([{"label": "PERSON", "pattern": "Gegwe", "id": "gegwe"},
                      {"label": "PLACE", "pattern": [{"LOWER": "the"}, {"LOWER": "river"}]}])
  nlp.add_pipe("blink_jax_linker", config={"workdir": workdir, "use_ents": True,
                                           "nil_threshold": 0.0})
  docs = list(nlp.pipe(TEXTS))
  given = [(i, e.start_char, e.end_char, e.label_) for i, doc in enumerate(docs)
           for e in doc.ents]
  assert [g[3] for g in given] == ["PERSON", "PLACE", "PERSON"]
  linker = linker_lib.Linker.load(workdir, overrides={"linker.nil_threshold.fast": 0.0})
  max_len = linker.config.data.max_context_len
  want = linker.disambiguate([linker_lib.mention_of(TEXTS[i], s, e, max_len)
                              for i, s, e, _ in given])
  got = [(i, e) for i, doc in enumerate(docs) for e in doc.ents]
  assert len(got) == len(given)  # Exactly the given spans, none added or dropped.
  for (i, ent), (_, s, e, label), r in zip(got, given, want):
    assert (ent.start_char, ent.end_char, ent.label_) == (s, e, label)
    assert ent.kb_id_ == str(r["entity_id"]) and not r["nil"]  # NIL off (threshold 0).
    assert ent._.blink_jax == pytest.approx({"start": s, "end": e, **r})
  assert docs[0].ents[0].ent_id_ == "gegwe"  # The NER's own span id is kept.
  assert docs[2].ents == () and docs[2]._.blink_jax == []
