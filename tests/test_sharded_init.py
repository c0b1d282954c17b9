"""Parameters and optimizer state are born sharded, and equal the one-device state."""

import jax
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from blink_jax import sharding
from blink_jax import trainer
from blink_jax.models import biencoder

# Big enough that the word embeddings, attention and feed-forward matrices are split over fsdp.
CFG = ml_collections.ConfigDict(dict(
    init_from="", pooling="cls", projection_dim=0,
    bert=dict(vocab_size=512, hidden_size=128, num_layers=1, num_heads=2,
              intermediate_size=512, max_position=16, dropout=0.1, attention_dropout=0.0)))


def _make():
  return biencoder.build(CFG, vocab_size=512, seed=3)


def _leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


def _check_shardings(tree, mesh):
  """Every leaf is where the rule puts it; returns how many are split over fsdp."""
  split = 0
  for path, x in _leaves(tree):
    want = NamedSharding(mesh, sharding.param_spec(x.shape, mesh.shape["fsdp"]))
    assert x.sharding.is_equivalent_to(want, x.ndim), (jax.tree_util.keystr(path),
                                                       x.sharding, want)
    split += want.spec != P()
  return split


@pytest.mark.parametrize("from_host", [False, True])
def test_state_is_created_sharded_and_equals_one_device(from_host):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  tx = optax.adamw(1e-3)
  if from_host:  # Pretrained weights: built on the host, placed shard by shard.
    host = jax.tree.map(np.asarray, trainer.Functional.split(_make())[1])
    fm, params = trainer.fresh_model(_make, mesh, pretrained=True)
    params = host
  else:  # Random init: computed under jit into its shardings.
    fm, params = trainer.fresh_model(_make, mesh, pretrained=False)
    assert _check_shardings(params, mesh) > 0  # Sharded before create_state sees it.
  state, state_sh = trainer.create_state(params, tx, mesh)

  # The arrays' own shardings, not only the rule: params and both Adam moments.
  assert _check_shardings(state["params"], mesh) >= 4
  mu, nu = state["opt_state"][0].mu, state["opt_state"][0].nu
  assert _check_shardings(mu, mesh) >= 4 and _check_shardings(nu, mesh) >= 4
  assert state["step"].sharding.is_fully_replicated
  for x, sh in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh)):
    assert x.sharding.is_equivalent_to(sh, x.ndim)
  # Each device holds only its shard of a split matrix.
  emb = state["params"]["entity_encoder"]["encoder"]["embeddings"]["word"]["embedding"]
  assert {s.data.shape for s in emb.addressable_shards} == {(128, 128)}  # 512 rows / 4.

  # The same values as the old path: the eager model and optimizer on one device.
  with jax.default_device(jax.devices()[0]):
    fm1, params1 = trainer.Functional.split(_make())
    opt1 = tx.init(params1)
  for (path, got), want in zip(_leaves(state["params"]), jax.tree.leaves(params1)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))
  for got, want in zip(jax.tree.leaves(state["opt_state"]), jax.tree.leaves(opt1)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The model works from the sharded parameters as from the one-device ones.
  ids = np.arange(8 * 6).reshape(8, 6) % 512
  mask = np.ones_like(ids)
  got = fm.apply(state["params"], None).embed_entities(ids, mask)
  want = fm1.apply(params1, None).embed_entities(ids, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_placing_host_arrays_never_makes_a_replica(monkeypatch):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  host = {"w": np.arange(512 * 256, dtype=np.float32).reshape(512, 256)}
  asked = []
  real = jax.make_array_from_callback

  def spy(shape, sh, cb):
    return real(shape, sh, lambda idx: asked.append(idx) or cb(idx))
  monkeypatch.setattr(jax, "make_array_from_callback", spy)
  monkeypatch.setattr(jax, "device_put", lambda *a, **k: pytest.fail("device_put"))
  placed = trainer.place(host, sharding.tree_shardings(mesh, host))
  # 8 devices, each asked only for its own quarter (the fsdp split of 512 rows).
  assert len(asked) == 8 and all(ix[0] != slice(None) for ix in asked)
  np.testing.assert_array_equal(np.asarray(placed["w"]), host["w"])
