"""--config.mode=index end to end: build from a checkpoint, add, delete, model checks."""

import numpy as np
import pytest

from blink_jax.stages import index as build_index
from blink_jax import evaluate
from blink_jax import index as index_lib
from blink_jax import main
from blink_jax.inference import encode
from blink_jax.inference import load as load_lib
from blink_jax.data import jsonl
from blink_jax.data import sources
from blink_jax.data.jsonl import Entity
from configs import demo


def _config(**index):
  config = demo.get_config("runlocal")
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  config.hard_negatives.num = 0
  config.evals = ("recall",)
  config.index.update(index)
  return config


def test_ids_to_delete_are_the_catalogues_own(tmp_path):
  assert build_index.parse_ids("3, 17,") == [("index.delete item 1", "3"),
                                             ("index.delete item 2", "17")]
  emb = np.eye(4, dtype=np.float32)
  ints = index_lib.Index.build(emb[:3], [3, 17, 5], ["a", "b", "c"], backend="exact")
  assert build_index.labels_to_delete(ints, "3, 17,") == [3, 17]
  path = tmp_path / "ids.txt"
  path.write_text("5\n\n9\nx\n")
  with pytest.raises(ValueError, match=r"ids.txt:3: '9' is not the id of an entity"):
    build_index.labels_to_delete(ints, str(path))
  # String ids (and an integer and a string that read alike), named in a file, one a line.
  keyed = index_lib.Index.build(emb, [0, 1, 2, 3], ["a", "b", "c", "d"], backend="exact",
                                keys=["Q1", 42, "42", "https://x.org/a,b"])
  path.write_text('Q1\n42\n"42"\nhttps://x.org/a,b\n')
  assert build_index.labels_to_delete(keyed, str(path)) == [0, 1, 2, 3]
  with pytest.raises(ValueError, match=r"item 2: 'Q9' is not the id of an entity"):
    build_index.labels_to_delete(keyed, "Q1,Q9")


def test_build_add_delete_from_the_cli_path(tmp_path):
  workdir = str(tmp_path / "w")
  config = _config()
  config.mode = "train_biencoder"
  main.run(config, workdir)
  config.mode = "index"
  index = main.run(config, workdir)
  data = sources.load(config, workdir)
  assert len(index) == len(data.entities)

  # The saved index holds the model's embeddings of every entity.
  trained = load_lib.load(workdir, "biencoder")
  model = trained.model
  tok = load_lib.tokenizer(config.tokenizer)
  emb = encode.embed_entities(model, tok, data.entities, config)
  loaded = index_lib.Index.load(tmp_path / "w" / "index", expect_model=trained.identity)
  world = data.entities.worlds[0]
  _, got = loaded.search(emb[:5], 3, worlds=[world] * 5)
  _, want = index_lib.Index.build(emb, data.entities.labels, None, data.entities.worlds,
                                  backend="exact").search(emb[:5], 3, [world] * 5)
  np.testing.assert_array_equal(got, want)

  # Add two entities and delete one: the next load sees exactly that.
  first = data.entities[0]
  new = [Entity(90001, "Zorblax", "a brand new thing", world),
         Entity(first.id, "Renamed", first.text, world)]
  jsonl.write_jsonl(tmp_path / "new.jsonl", new)
  victim = int(data.entities.labels[3])
  config.index.add = str(tmp_path / "new.jsonl")
  config.index.delete = str(victim)
  main.run(config, workdir)
  after = index_lib.Index.load(tmp_path / "w" / "index")
  assert len(after) == len(data.entities)  # +1 new, 1 replaced, -1 deleted.
  assert after.title_of([90001, first.id, victim]) == ["Zorblax", "Renamed", None]
  new_emb = encode.embed_entities(model, tok, jsonl.open_entities(tmp_path / "new.jsonl"),
                                    config)
  _, got = after.search(new_emb[:1], len(after), worlds=[world])
  assert 90001 in got[0] and victim not in got[0]

  # Train further: the index no longer belongs to the model in the workdir.
  config.mode = "train_biencoder"
  config.train.num_steps = 4
  main.run(config, workdir)
  config.mode = "index"
  with pytest.raises(index_lib.IndexLoadError, match="built from model"):
    main.run(config, workdir)
