"""Data loading for one's own BLINK-format files: several training files, NIL golds, recipe defaults."""

import logging
import os

import pytest

from blink_jax.data import jsonl
from blink_jax.data import sources
from configs import jsonl as jsonl_config


def _files(tmp_path):
  jsonl.write_jsonl(tmp_path / "kb.jsonl", [jsonl.Entity(i, f"Entity {i}", f"About {i}.")
                                            for i in range(3)])
  jsonl.write_jsonl(tmp_path / "a.jsonl", [jsonl.Mention("x ", "Entity 0", " y", 0),
                                           jsonl.Mention("x ", "Someone", " y", -1)])
  jsonl.write_jsonl(tmp_path / "b.jsonl", [jsonl.Mention("x ", "Entity 2", " y", 2),
                                           jsonl.Mention("x ", "Nobody", " y", -1),
                                           jsonl.Mention("x ", "Entity 1", " y", 1)])


def test_several_training_files_and_nil_golds_dropped_and_counted(tmp_path, caplog):
  _files(tmp_path)
  config = jsonl_config.get_config()
  config.data.entities = str(tmp_path / "kb.jsonl")
  config.data.train = f"{tmp_path / 'a.jsonl'}, {tmp_path / 'b.jsonl'}"
  config.data.eval = str(tmp_path / "b.jsonl")
  with caplog.at_level(logging.WARNING):
    data = sources.load(config, str(tmp_path))
  assert [m.mention for m in data.train] == ["Entity 0", "Entity 2", "Entity 1"]
  assert "Dropped 2 of 5 training mentions whose gold is NIL" in caplog.text
  # Evaluation keeps NIL golds (recall counts only in-catalogue ones).
  assert data.evals["b"].labels.tolist() == [2, -1, 1]


def test_the_jsonl_config_defaults_are_the_recipe():
  config = jsonl_config.get_config()
  assert config.hard_negatives.num > 0
  assert config.train.num_epochs > config.hard_negatives.start_epoch  # Negatives are used.
  assert config.cross.model.init_from == config.model.init_from  # Not random weights.
  assert config.hard_negatives.hybrid


def test_string_id_files_are_read_through_the_catalogues_ids(tmp_path):
  # A Wikidata-style catalogue, and mention and document files that name entities by QID.
  kb = [{"id": q, "title": t, "text": f"About {t}."}
        for q, t in (("Q90", "Paris"), ("Q456", "Lyon"), ("Q64", "Berlin"))]
  jsonl.write_jsonl(tmp_path / "kb.jsonl", kb)
  jsonl.write_jsonl(tmp_path / "train.jsonl", [
      {"context_left": "x ", "mention": "Berlin", "context_right": " y", "label_id": "Q64"},
      {"context_left": "x ", "mention": "Nobody", "context_right": " y", "label_id": -1}])
  jsonl.write_jsonl(tmp_path / "docs.jsonl", [
      {"id": 1, "text": "Lyon, Paris.", "mentions": [
          {"start": 0, "end": 4, "label_id": "Q456"}, {"start": 6, "end": 11,
                                                       "label_id": "Q90"}]}])
  config = jsonl_config.get_config()
  config.data.entities = str(tmp_path / "kb.jsonl")
  config.data.train = str(tmp_path / "train.jsonl")
  config.data.eval = str(tmp_path / "train.jsonl")
  config.data.eval_documents = str(tmp_path / "docs.jsonl")
  data = sources.load(config, str(tmp_path), documents=True)
  assert data.entities.keys.tolist() == ["Q90", "Q456", "Q64"]
  # Labels are the catalogue's record positions; NIL stays -1 (and leaves training).
  assert data.train.labels.tolist() == [2] and data.evals["train"].labels.tolist() == [2, -1]
  assert [s.label_id for s in data.eval_documents["docs"][0].spans] == [1, 0]
  rows = data.entities.positions_of(data.train.labels)
  assert [e.entity_id for e in data.entities.take(rows)] == ["Q64"]


@pytest.mark.parametrize("process", [0, 1])
def test_synthetic_worlds_are_written_by_process_0_before_the_others_read(
    process, tmp_path, monkeypatch):
  # A process writing beside process 0 could replace a file under a reader. Process 0
  # writes, every process meets at a barrier, and only then do the others look (and, on
  # a disk of their own, write the same deterministic files).
  from configs import demo as demo_config
  events = []
  monkeypatch.setattr(sources.jax, "process_index", lambda: process)
  monkeypatch.setattr(sources.jax, "process_count", lambda: 2)
  monkeypatch.setattr(sources.multihost_utils, "sync_global_devices",
                      lambda name: events.append(("barrier", name)))
  real = sources.synthetic.ensure_written
  monkeypatch.setattr(sources.synthetic, "ensure_written",
                      lambda cfg, out: events.append(("write", process)) or real(cfg, out))
  config = demo_config.get_config()
  config.data.synthetic.update(num_train_worlds=1, num_test_worlds=1, entities_per_world=10,
                               docs_per_world=2)
  paths = sources.synthetic_paths(config, str(tmp_path))
  kinds = [e[0] for e in events]
  assert kinds == (["write", "barrier"] if process == 0 else ["barrier", "write"])
  assert all(os.path.isfile(p) for p in paths.values())
