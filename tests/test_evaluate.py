"""Evaluation pieces: sharded streaming encode, per-world ranking, hard negatives."""

import jax
import ml_collections
import numpy as np
import pytest

from blink_jax import evaluate
from blink_jax.inference import encode
from blink_jax.inference import retrieve
from blink_jax.stages import biencoder as biencoder_stage
from blink_jax import sharding
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
import tiny_model

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tiny_model.tokenizer(tmp_path_factory.mktemp("vocab"))


_model = tiny_model.biencoder_model


def _entities(n, rng):
  return [Entity(100 + i, f"w{rng.integers(56)}",
                 " ".join(f"w{x}" for x in rng.integers(56, size=rng.integers(1, 9))),
                 f"world{i % 3}") for i in range(n)]


def test_sharded_streaming_encode_equals_one_call(tok):
  # 13 entities in calls of 8 rows over 8 devices: the last call is padded.
  entities = Records.of(_entities(13, np.random.default_rng(0)))
  model = _model()
  config = ml_collections.ConfigDict(dict(data=dict(max_entity_len=12),
                                          eval=dict(batch_size=8)))
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  got = encode.embed_entities(model, tok, entities, config, mesh)
  es = list(entities)
  batch = tok.encode_entities([e.title for e in es], [e.text for e in es], 12)
  with jax.default_device(jax.devices()[0]):
    want = np.asarray(model.entity_encoder(batch.ids, batch.mask))
  assert got.shape == (13, 32)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_dense_ranking_stays_in_each_world():
  entities = Records.of([Entity(i, "", "", w) for i, w in enumerate("aabbb")])
  mentions = Records.of([Mention("", "", "", 0, "a"), Mention("", "", "", 4, "b")])
  emb = np.eye(5, dtype=np.float32)
  # Mention 0 is closest to entity 2 (world b), which it must never see.
  queries = np.array([[0.5, 0.1, 0.9, 0, 0], [0, 0.3, 0, 0.2, 0.9]], np.float32)
  cat = retrieve.Catalogue(None, None, entities, None, embeddings=emb)
  ranked = cat.search(queries, mentions.worlds, 3)[1]
  assert ranked.tolist() == [[0, 1, -1], [4, 3, 2]]
  report = evaluate.recall_report(ranked, mentions, [1, 2])
  assert report["per_world"]["a"]["recall@1"] == 1.0
  assert report["macro/recall@1"] == 1.0


def test_negatives_skip_the_gold_and_keep_rank_order():
  entities = Records.of([Entity(i + 10, "", "", None) for i in range(5)])
  mentions = Records.of([Mention("", "", "", 12, None), Mention("", "", "", 14, None),
                         Mention("", "", "", 10, None)])
  ranked = np.array([[11, 12, 13], [10, 11, 12], [10, -1, -1]])
  rows = biencoder_stage.negatives_from_ranking(ranked, entities, mentions, num=2)
  # Catalogue rows of ids: 11 -> 1, 13 -> 3, 10 -> 0, ...
  assert rows.tolist() == [[1, 3], [0, 1], [-1, -1]]
