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
