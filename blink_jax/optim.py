"""BLINK's optimizer: AdamW with linear warm-up and decay, clipping, accumulation.

Weight decay (0.01) applies to weight matrices and embeddings, not to
biases or LayerNorm parameters, as in BERT and BLINK.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import optax

NO_DECAY = ("bias", "scale")  # Flax names of biases and LayerNorm gains.


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay."""
  def keep(path, _):
    # The parameter's name is the last dict key; nnx.State paths end in a
    # `.value` attribute of the Variable, which is not the name.
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(keys[-1]) not in NO_DECAY
  return jax.tree_util.tree_map_with_path(keep, params)


def learning_rate(cfg: ml_collections.ConfigDict, total_updates: int) -> optax.Schedule:
  """Linear warm-up over `warmup_fraction` of the updates, then linear decay to 0."""
  warmup = int(cfg.warmup_fraction * total_updates)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
       optax.linear_schedule(cfg.learning_rate, 0.0, max(total_updates - warmup, 1))],
      [warmup])


def make(cfg: ml_collections.ConfigDict, total_steps: int
         ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of `config.optim` for a run of `total_steps` train steps.

  With `grad_accum_steps` = k, gradients of k consecutive steps are averaged
  before one update, so the optimizer's schedule counts total_steps // k
  updates. The schedule returned beside it is indexed by *train step*: it
  gives the lr of the update that step contributes to, so a trainer that logs
  `schedule(step)` logs the lr actually applied, not one running k times fast.
  """
  accum = int(cfg.get("grad_accum_steps", 1))
  schedule = learning_rate(cfg, max(total_steps // accum, 1))
  update = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                       eps=cfg.get("eps", 1e-8), weight_decay=cfg.weight_decay,
                       mask=decay_mask)
  frozen = tuple(cfg.get("frozen", ()) or ())
  if frozen:
    update = optax.multi_transform({"train": update, "frozen": optax.set_to_zero()},
                                   functools.partial(frozen_labels, names=frozen))
  tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), update)
  if accum == 1:
    return tx, schedule
  tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, lambda step: schedule(step // accum)


def frozen_labels(params: Any, names: tuple[str, ...]) -> Any:
  """"frozen" for every parameter with one of `names` on its path, else "train".

  ("embeddings",) is BLINK's recipe: its optimizer takes only the encoder layers
  (`type_optimization=all_encoder_layers`), so the word, position and segment
  embeddings and their LayerNorm keep their pretrained values. Gradient clipping
  still counts their gradients, as BLINK's does.
  """
  def label(path, _):
    keys = {str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)}
    return "frozen" if keys & set(names) else "train"
  return jax.tree_util.tree_map_with_path(label, params)


def freeze(tx: optax.GradientTransformation, params: Any, frozen_prefix: str
           ) -> optax.GradientTransformation:
  """`tx` on every parameter except those under `frozen_prefix`, which never change.

  Frozen parameters get no optimizer state and no weight decay (a plain
  zero gradient would still let AdamW decay them).
  """
  def label(path, _):
    keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    return "frozen" if keys and keys[0] == frozen_prefix else "train"
  labels = jax.tree_util.tree_map_with_path(label, params)
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
