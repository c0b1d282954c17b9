"""The synthetic Zeshel-style corpus: determinism, zero-shot split, ambiguity, valid files."""

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blink_jax.bm25 import tokenize
from blink_jax.data import synthetic
from blink_jax.data.jsonl import read_documents, read_entities, read_mentions
from blink_jax.data.synthetic import SyntheticConfig

SMALL = SyntheticConfig(num_train_worlds=2, num_test_worlds=2, entities_per_world=40,
                        mentions_per_entity=2, docs_per_world=4, seed=3)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
  return synthetic.generate(SMALL)


def name_parts_of_title(title: str) -> list[str]:
  return re.sub(r" \(.*\)$", "", title).split()


def test_sizes_and_global_ids(corpus):
  assert len(corpus.train_worlds) == 2 and len(corpus.test_worlds) == 2
  assert len(corpus.entities) == 4 * 40
  # Ids are 0..N-1, assigned world by world in train-then-test order.
  assert [e.id for e in corpus.entities] == list(range(160))
  order = corpus.train_worlds + corpus.test_worlds
  assert [e.world for e in corpus.entities] == [w for w in order for _ in range(40)]
  assert len(corpus.train_mentions) == 2 * 40 * 2 and len(corpus.test_mentions) == 2 * 40 * 2
  assert len(corpus.train_documents) == 2 * 4 and len(corpus.test_documents) == 2 * 4


def test_zero_shot_split_is_disjoint(corpus):
  train, test = set(corpus.train_worlds), set(corpus.test_worlds)
  assert not train & test
  train_ents = [e for e in corpus.entities if e.world in train]
  test_ents = [e for e in corpus.entities if e.world in test]
  assert not {e.id for e in train_ents} & {e.id for e in test_ents}
  assert not {e.title for e in train_ents} & {e.title for e in test_ents}
  train_tokens = set()
  for e in train_ents:
    train_tokens.update(tokenize(f"{e.title} {e.text}"))
  for m in corpus.train_mentions:
    train_tokens.update(tokenize(f"{m.context_left} {m.mention} {m.context_right}"))
  for d in corpus.train_documents:
    train_tokens.update(tokenize(d.text))
  test_names = {p.lower() for e in test_ents for p in name_parts_of_title(e.title)}
  test_names |= {n.lower() for w in test for n in corpus.name_parts[w]}
  assert test_names and not test_names & train_tokens
  # Mentions and documents stay inside their split's worlds.
  assert {m.world for m in corpus.train_mentions} == train
  assert {m.world for m in corpus.test_mentions} == test
  assert {d.world for d in corpus.test_documents} == test


def test_zero_shot_check_catches_a_leak(corpus):
  test_name = corpus.name_parts[corpus.test_worlds[0]][0]
  m = corpus.train_mentions[0]
  leaked = dataclasses.replace(corpus, train_mentions=[
      dataclasses.replace(m, context_left=f"{test_name} was here. ")] + corpus.train_mentions[1:])
  with pytest.raises(RuntimeError, match="names occur in training"):
    synthetic.check_zero_shot(leaked)


def test_every_world_has_shared_surface_forms(corpus):
  for world in corpus.train_worlds + corpus.test_worlds:
    owners: dict[str, set[int]] = {}
    for e in corpus.entities:
      if e.world == world:
        for part in name_parts_of_title(e.title):
          owners.setdefault(part, set()).add(e.id)
    assert max(len(ids) for ids in owners.values()) >= 2, world
  # Ambiguous mentions exist: the mention string is not the title, but a part of it.
  by_id = {e.id: e for e in corpus.entities}
  partial = [m for m in corpus.test_mentions if m.mention != by_id[m.label_id].title]
  assert len(partial) > len(corpus.test_mentions) // 4


def test_mentions_are_consistent_with_catalogue(corpus):
  by_id = {e.id: e for e in corpus.entities}
  for m in corpus.train_mentions + corpus.test_mentions:
    gold = by_id[m.label_id]
    assert m.world == gold.world and m.label_title == gold.title
    assert 20 <= len(m.context_left.split()) <= 60
    assert 20 <= len(m.context_right.split()) <= 60
    # The mention is the title, a name part of it, or a "First the Epithet" alias in the text.
    parts = name_parts_of_title(gold.title)
    assert (m.mention in (" ".join(parts), *parts)
            or (m.mention.startswith(parts[0] + " the ") and m.mention in gold.text)), m


def test_paraphrase_words_never_appear_in_descriptions(corpus):
  paraphrases = set()
  for table in (synthetic.TRAITS, synthetic.COLOURS, synthetic.EMBLEMS, synthetic.OBJECTS):
    for words in table.values():
      paraphrases.update(tokenize(" ".join(words)))
  description_tokens = set()
  for e in corpus.entities:
    description_tokens.update(tokenize(e.text))
  assert not paraphrases & description_tokens
  context_tokens = set()
  for m in corpus.test_mentions:
    context_tokens.update(tokenize(m.context_left + " " + m.context_right))
  assert len(paraphrases & context_tokens) > len(paraphrases) // 2


def test_documents_spans_match_text(corpus):
  by_id = {e.id: e for e in corpus.entities}
  for d in corpus.train_documents + corpus.test_documents:
    assert len(d.spans) >= 3
    for s in d.spans:
      assert d.text[s.start:s.end] == s.mention
      assert by_id[s.label_id].world == d.world and by_id[s.label_id].title == s.label_title


def test_written_files_read_back(tmp_path, corpus):
  paths = synthetic.write(corpus, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      list(synthetic.FILES.values()) + [synthetic.MANIFEST])
  entities = read_entities(paths["entities"])
  assert entities == corpus.entities
  ids = {e.id for e in entities}
  assert read_mentions(paths["test_mentions"], catalogue_ids=ids) == corpus.test_mentions
  assert read_documents(paths["train_documents"], catalogue_ids=ids) == corpus.train_documents


def test_same_seed_same_bytes_even_in_another_process(tmp_path):
  a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
  synthetic.write(synthetic.generate(SMALL), a)
  # A fresh interpreter with a different string-hash seed: set iteration order would change.
  code = (f"from blink_jax.data import synthetic as s; "
          f"s.write(s.generate(s.{SMALL!r}), {str(b)!r})")
  env = {**os.environ, "PYTHONHASHSEED": "12345"}
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
  for name in list(synthetic.FILES.values()) + [synthetic.MANIFEST]:
    assert (a / name).read_bytes() == (b / name).read_bytes(), name
  synthetic.write(synthetic.generate(dataclasses.replace(SMALL, seed=4)), c)
  for name in synthetic.FILES.values():
    assert (a / name).read_bytes() != (c / name).read_bytes(), name


def test_ensure_written_only_rewrites_when_config_changes(tmp_path):
  paths = synthetic.ensure_written(SMALL, tmp_path)
  stamp = paths["entities"].stat().st_mtime_ns
  time.sleep(0.01)
  assert synthetic.ensure_written(SMALL, tmp_path) == paths
  assert paths["entities"].stat().st_mtime_ns == stamp  # Untouched.
  other = dataclasses.replace(SMALL, seed=9)
  synthetic.ensure_written(other, tmp_path)
  assert paths["entities"].read_bytes() != b"" and paths["entities"].stat().st_mtime_ns != stamp
  # A missing data file also triggers a rewrite.
  paths["test_mentions"].unlink()
  synthetic.ensure_written(other, tmp_path)
  assert paths["test_mentions"].is_file()


def test_default_config_is_fast_and_tiny_worlds_work():
  start = time.perf_counter()
  corpus = synthetic.generate(SyntheticConfig())
  assert time.perf_counter() - start < 2.0
  assert len(corpus.entities) == 6 * 200 and len(corpus.test_mentions) == 2 * 200 * 4
  tiny = synthetic.generate(SyntheticConfig(1, 1, entities_per_world=3, mentions_per_entity=1,
                                            docs_per_world=1))
  assert len(tiny.entities) == 6


def test_bad_config_is_refused():
  with pytest.raises(ValueError):
    synthetic.generate(SyntheticConfig(num_test_worlds=0))
