"""The optimizer's learning-rate schedule as the trainers log it."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from blink_jax import optim


def test_logged_lr_is_the_update_lr_under_gradient_accumulation():
  # make()'s schedule is called with the train (micro-)step; with k = 4 it
  # must give the lr of the update that step contributes to. With a constant
  # gradient, no decay and no clipping, AdamW's update is exactly -lr.
  accum, total_steps = 4, 80  # 20 updates, 2 of them warm-up.
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_fraction=0.1,
                                       weight_decay=0.0, grad_clip_norm=1e9,
                                       grad_accum_steps=accum, eps=0.0))
  tx, schedule = optim.make(cfg, total_steps)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  grads = {"w": jnp.ones(3)}
  for step in range(total_steps):
    updates, state = tx.update(grads, state, params)
    if (step + 1) % accum == 0:  # MultiSteps applies the k averaged gradients.
      np.testing.assert_allclose(-updates["w"], float(schedule(step)), rtol=1e-4,
                                 err_msg=f"train step {step}")
  # Hand-computed: warm-up 0 -> 1 over updates 0..2, then linear decay to 0 at 20.
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 3, 4, 7, 8, 44, 79)],
      [0.0, 0.0, 0.5, 0.5, 1.0, 0.5, 1 / 18], atol=1e-6)
  np.testing.assert_allclose(schedule(jnp.int32(44)), 0.5, atol=1e-6)  # Traced steps too.


def test_schedule_without_accumulation_is_unchanged():
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_fraction=0.1,
                                       weight_decay=0.01, grad_clip_norm=1.0))
  _, schedule = optim.make(cfg, 100)
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 55, 100)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_frozen_names_never_change_and_still_count_in_clipping():
  # BLINK's recipe trains the encoder layers, not the embeddings; its gradient clipping
  # runs over every parameter. Two parameters, one under "embeddings", gradient norm 5
  # (clip 1): the frozen one gets a zero update, the other is clipped by the norm of
  # both, 4 -> 0.8. AdamW's first update with eps e is -lr * g / (|g| + e): with e = 1,
  # -0.8 / 1.8 (clipped over both) where clipping over the trained one alone gives -0.5.
  cfg = ml_collections.ConfigDict(dict(learning_rate=1.0, warmup_fraction=0.0,
                                       weight_decay=0.0, grad_clip_norm=1.0,
                                       frozen=("embeddings",), eps=1.0))
  tx, _ = optim.make(cfg, 10)
  params = {"tower": {"embeddings": {"word": jnp.full(2, 2.0)},
                      "layers": {"kernel": jnp.full(2, 2.0)}}}
  grads = {"tower": {"embeddings": {"word": jnp.array([3.0, 0.0])},
                     "layers": {"kernel": jnp.array([0.0, 4.0])}}}
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["tower"]["embeddings"]["word"], [0.0, 0.0])
  np.testing.assert_allclose(updates["tower"]["layers"]["kernel"], [0.0, -0.8 / 1.8],
                             atol=1e-5)
  assert optim.frozen_labels(params, ("embeddings",)) == {
      "tower": {"embeddings": {"word": "frozen"}, "layers": {"kernel": "train"}}}
  # Nothing frozen: the same step moves both.
  cfg.frozen = ()
  tx, _ = optim.make(cfg, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["tower"]["embeddings"]["word"], [-0.6 / 1.6, 0.0],
                             atol=1e-5)
