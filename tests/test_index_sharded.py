"""The catalogue from the encoder to the exact index without a host copy, against references.

`encode.embed_catalogue` leaves the embeddings split by rows over the devices
and `Index.build` quantizes them where they lie; everything must equal the
host path (`embed_entities` + a numpy matrix) on one device.
"""

import ml_collections
import numpy as np
import pytest

import jax
from blink_jax import exact_search
from blink_jax import index as index_lib
from blink_jax import sharding
from blink_jax.data.jsonl import Entity
from blink_jax.data.records import Records
from blink_jax.inference import encode
import tiny_model

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tiny_model.tokenizer(tmp_path_factory.mktemp("vocab"))


_model = tiny_model.biencoder_model


def _entities(n, seed=0):
  rng = np.random.default_rng(seed)
  return Records.of([Entity(100 + i, f"w{rng.integers(56)}",
                            " ".join(f"w{x}" for x in rng.integers(56, size=rng.integers(1, 9))),
                            f"world{i % 3}") for i in range(n)])


CONFIG = ml_collections.ConfigDict(dict(data=dict(max_entity_len=12), eval=dict(batch_size=16)))


def test_each_device_encodes_and_keeps_its_own_rows(tok):
  # 37 rows on 8 devices, 2 per call: 5 rows per device, the last device's 2 real.
  entities, model = _entities(37), _model()
  mesh = sharding.make_mesh()
  got = encode.embed_catalogue(model, tok, entities, CONFIG, mesh)
  assert isinstance(got.array, jax.Array) and got.count == 37 and got.per_device == 5
  assert got.array.shape == (40, 32)
  one = sharding.make_mesh(devices=jax.devices()[:1])
  want = encode.embed_entities(model, tok, entities, CONFIG, one)  # The host path.
  for shard in got.array.addressable_shards:
    # Device i holds rows [5i, 5i + 5) and nothing else: no replica anywhere.
    start = shard.index[0].start or 0
    assert shard.data.shape == (5, 32)
    assert start == 5 * mesh.devices.flatten().tolist().index(shard.device)
    real = want[start:start + 5]
    np.testing.assert_allclose(np.asarray(shard.data)[:len(real)], real, atol=1e-5)
    assert not np.asarray(shard.data)[len(real):].any()  # Padding rows are zeros.
  np.testing.assert_allclose(got.to_host(chunk=16), want, atol=1e-5)
  assert got.mask.sum() == 37


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "int8"])
def test_an_index_built_from_device_rows_equals_the_host_build(tok, storage):
  entities, model = _entities(203, seed=1), _model()
  ids, worlds = entities.labels * 3 + 1, entities.worlds
  rows = encode.embed_catalogue(model, tok, entities, CONFIG, sharding.make_mesh())
  eight = index_lib.Index.build(rows, ids, None, worlds, backend="exact", storage=storage)
  assert eight._exact.mesh.size == 8
  one_mesh = sharding.make_mesh(devices=jax.devices()[:1])
  host = encode.embed_entities(model, tok, entities, CONFIG, one_mesh)
  one = index_lib.Index.build(host, ids, None, worlds, backend="exact", storage=storage,
                              mesh=one_mesh)
  # The stored rows: the same bits as numpy's quantization of the host matrix.
  live = np.arange(203)
  (_, v8, s8), = eight._exact.iter_rows(live)
  (_, v1, s1), = one._exact.iter_rows(live)
  want_v, want_s = exact_search.quantize(host, storage)
  np.testing.assert_array_equal(v1, want_v)
  if storage == "float32":
    np.testing.assert_allclose(v8, want_v, atol=1e-5)  # Encoded on 8 devices vs 1.
  else:
    assert (v8.astype(np.float32) != want_v.astype(np.float32)).mean() < 0.02
  np.testing.assert_allclose(s8, want_s, rtol=1e-5)
  q = host[::7] + 0.01
  np.testing.assert_array_equal(eight.search(q, 10)[1], one.search(q, 10)[1])
  qw = [worlds[i] for i in range(0, 203, 7)]
  np.testing.assert_array_equal(eight.search(q, 10, qw)[1], one.search(q, 10, qw)[1])
  # It changes and saves like any index: the first add past the exact capacity re-lays.
  for idx in (eight, one):
    idx.add(host[:3] * 2, [9000, 9001, 9002], ["a", "b", "c"], ["world0"] * 3)
    idx.delete([int(ids[5])])
  np.testing.assert_array_equal(eight.search(q, 10)[1], one.search(q, 10)[1])


def test_save_of_a_device_built_index_loads_as_before(tok, tmp_path):
  entities, model = _entities(50, seed=2), _model()
  rows = encode.embed_catalogue(model, tok, entities, CONFIG, sharding.make_mesh())
  host = rows.to_host()
  idx = index_lib.Index.build(rows, entities.labels, [e.title for e in entities],
                              backend="exact")
  # In float32 the index stores the encoder's buffer itself, not a copy of it.
  assert rows.array.is_deleted()
  idx.save(tmp_path / "ix")
  back = index_lib.Index.load(tmp_path / "ix")
  np.testing.assert_allclose(np.load(tmp_path / "ix" / "vectors.npy"), host)
  np.testing.assert_array_equal(back.search(host, 5)[1], idx.search(host, 5)[1])


def test_a_layout_other_than_the_index_is_refused(tok):
  rows = encode.encode_rows(lambda ids, mask: ids * 1.0, lambda r: tok.encode_entities(
      ["w1"] * len(r), ["w2"] * len(r), 4), 20000, batch_size=8192,
      mesh=sharding.make_mesh())
  assert rows.per_device == 2500 and exact_search.rows_per_device(20000, 8) == 2500
  with pytest.raises(ValueError, match="need"):
    # 17000 rows are laid out 2125 per device in the index, not 2500.
    index_lib.Index.build(sharding.ShardedRows(rows.array, 17000), np.arange(17000),
                          None, backend="exact")
