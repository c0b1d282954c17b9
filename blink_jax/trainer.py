"""What every trainer shares: sharded train state, the jitted update, the loop.

The bi-encoder, the cross-encoder and the distilled student differ in their
model, loss and batches; they train the same way, here:
  * `Functional`: a model as a pure function of its parameters;
  * `init_model` / `create_state` / `restore`: parameters and optimizer
    state born sharded over the mesh (random init and optimizer state under
    jit with out_shardings; pretrained weights placed shard by shard), and
    resumed from a stage's checkpoints;
  * `make_train_step` / `compile_step`: one update, jitted with explicit
    shardings and the state donated; dropout keyed by (seed, step), so a
    resumed run draws the masks the uninterrupted one would have;
  * `train_loop`: resume from the latest checkpoint, one progress bar,
    averaged logs every `log_every` steps (NaN check), checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from blink_jax import checkpoint as ckpt_lib
from blink_jax import metric_writer
from blink_jax import progress as progress_lib
from blink_jax import sharding
from blink_jax.data import loader as loader_lib

# (params, batch, key) -> ((loss, metrics), grads)
LossAndGrads = Callable[[Any, Mapping[str, jax.Array], jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Functional:
  """A model as pure functions of its parameters (an nnx.State)."""

  graphdef: Any
  rest: Any  # Non-parameter state (dropout RNG streams); never trained.

  @classmethod
  def split(cls, model: nnx.Module) -> tuple["Functional", Any]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return cls(graphdef, rest), params

  def module(self, params) -> nnx.Module:
    # Fresh copies of the RNG variables: dropout mutates them, and NNX allows
    # mutation only of variables created in the current trace.
    return nnx.merge(self.graphdef, params, jax.tree.map(lambda x: x, self.rest))

  def apply(self, params, key: jax.Array | None) -> nnx.Module:
    """The model in train mode with dropout drawn from `key`; eval mode if None."""
    model = self.module(params)
    if key is None:
      model.eval()
    else:
      model.train()
      nnx.reseed(model, dropout=key)  # Streams from bert.make_rngs.
    return model


def init_model(make: Callable[[], nnx.Module], mesh,
               functional: type[Functional] = Functional) -> tuple[Functional, Any]:
  """A randomly initialised model whose parameters are born sharded over `mesh`.

  `make()` runs under `jax.jit` with out_shardings from `jax.eval_shape`, so
  each device computes only its own shards: no full copy of the parameters
  exists anywhere, not even on one device. The values are those `make()`
  gives eagerly (random bits do not depend on the sharding with
  jax_threefry_partitionable, the default). Not for pretrained weights: read
  from a file, they would become constants of the compiled program; place
  them with `create_state` instead.
  """
  graphdef = nnx.split(nnx.eval_shape(make), nnx.Param, ...)[0]

  def init():
    _, params, rest = nnx.split(make(), nnx.Param, ...)
    return params, rest

  params, rest = jax.eval_shape(init)
  out_sh = (sharding.tree_shardings(mesh, params),
            jax.tree.map(lambda _: sharding.replicated(mesh), rest))
  params, rest = jax.jit(init, out_shardings=out_sh)()
  return functional(graphdef, rest), params


def fresh_model(make: Callable[[], nnx.Module], mesh, *, pretrained: bool,
                functional: type[Functional] = Functional) -> tuple[Functional, Any]:
  """`make()`'s model as (Functional, params), for a trainer to start from.

  A random init is born sharded (`init_model`); a model that starts from
  pretrained weights is built on the host, where the checkpoint is read, and
  `create_state` places it shard by shard.
  """
  if pretrained:
    return functional.split(make())
  return init_model(make, mesh, functional)


def place(tree: Any, shardings: Any) -> Any:
  """Puts each array of `tree` in its sharding, moving only what each device holds.

  A host array (numpy, or a jax.Array on one device: pretrained weights just
  read) goes shard by shard (`make_array_from_callback`): each process places
  only its addressable shards and no device ever holds a replica. An array
  already spread over devices is resharded on them (a no-op when it is already
  in place, as restored checkpoints are).
  """
  def one(x, sh):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
      return jax.device_put(x, sh)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])
  return jax.tree.map(one, tree, shardings)


def create_state(params: Any, tx: optax.GradientTransformation, mesh
                 ) -> tuple[dict, dict]:
  """The train state {params, opt_state, step} sharded over `mesh`, and its shardings.

  Nothing is created replicated and then split: the parameters are placed
  shard by shard (`place`; from `init_model` they are in place already), and
  the optimizer state (Adam's two moments: twice the parameters) and the step
  are computed under jit straight into their shardings, from `jax.eval_shape`.
  """
  param_sh = sharding.tree_shardings(mesh, params)
  params = place(params, param_sh)
  opt_sh = sharding.tree_shardings(mesh, jax.eval_shape(tx.init, params))
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  rep = sharding.replicated(mesh)
  state = {"params": params, "opt_state": opt_state,
           "step": jax.jit(lambda: jnp.zeros((), jnp.int32), out_shardings=rep)()}
  return state, {"params": param_sh, "opt_state": opt_sh, "step": rep}


def restore(ckpt: ckpt_lib.Checkpointer, state: dict, state_sh: dict, *, what: str,
            total_steps: int) -> tuple[dict, dict]:
  """The latest checkpoint's (state, meta), or (state, {}) when there is none."""
  restored = ckpt.restore(ckpt_lib.abstract(state, state_sh))
  if restored is None:
    return state, {}
  state, meta = restored
  step = int(state["step"])
  saved_input = meta.get("input", {}).get("next_step", step)
  if saved_input != step:
    raise ckpt_lib.CheckpointConfigError(
        f"{what}: the checkpoint's input position ({saved_input}) is not its step ({step}).")
  if step > total_steps:
    # Extending a run is resuming; shortening it would silently hand on a
    # model trained longer than asked for.
    raise ckpt_lib.CheckpointConfigError(
        f"{what}: the checkpoint in {ckpt.directory} is at step {step}, past the "
        f"{total_steps} steps asked for. Ask for at least {step} steps, use a new "
        "--workdir, or delete the stage's directory to retrain.")
  logging.info("Resuming at step %d of %d (%s).", step, total_steps, what)
  return state, meta


def make_loader(indices: Callable[[int], np.ndarray],
                tokenize: Callable[[np.ndarray], Mapping[str, np.ndarray]], input_cfg,
                restart_at: Callable[[int], bool] | None = None) -> loader_lib.StepLoader:
  """A stage's `StepLoader` with `config.input`'s threads and prefetch."""
  input_cfg = input_cfg or {}
  return loader_lib.StepLoader(indices, tokenize, num_threads=input_cfg.get("num_threads", 2),
                               prefetch=input_cfg.get("prefetch", 2), restart_at=restart_at)


def make_train_step(loss_and_grads: LossAndGrads, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, seed: int):
  """One update: (state, batch) -> (state, metrics). Pure; jit it."""

  def train_step(state, batch):
    # Dropout randomness is a function of (seed, step): a resumed run draws
    # exactly the masks the uninterrupted run would have.
    key = jax.random.fold_in(jax.random.key(seed), state["step"])
    (loss, metrics), grads = loss_and_grads(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state["step"])}
    new = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new, metrics

  return train_step


def compile_step(train_step, state_sh: dict, mesh):
  """jit with explicit shardings; the state's buffers are donated."""
  rep = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def train_loop(*, state: dict, train_step, loader: loader_lib.StepLoader, total_steps: int, mesh, ckpt: ckpt_lib.Checkpointer,
               writer: metric_writer.MetricWriter, tag: str, log_every: int,
               before_step: Callable[[int, dict], None] | None = None,
               meta: Callable[[], Mapping[str, Any]] = dict,
               evaluate: Callable[[int, dict], None] | None = None) -> dict:
  """Runs `train_step` from the state's step to `total_steps`; returns the state.

  `loader` builds this process's rows of each step's global batch, ahead of
  the devices in worker threads (`data/loader.py`); before_step(step, state)
  runs first (e.g. hard-negative mining); meta() is saved
  beside each checkpoint; evaluate(step, state) runs after each step but the
  last (the stage evaluates its final model itself). Logs go to `writer` under `tag`.
  """
  step = int(state["step"])
  pending = []
  t_log = time.time()
  progress = progress_lib.progress(total_steps, initial=step, desc=tag)
  batches = loader.iterate(step, total_steps)
  try:
    while step < total_steps:
      if before_step is not None:
        before_step(step, state)
      at, batch = next(batches)
      assert at == step, (at, step)
      state, metrics = train_step(state, sharding.global_batch(batch, mesh))
      step += 1
      progress.update(1)
      pending.append(metrics)
      if step % log_every == 0 or step == total_steps:
        logs = jax.tree.map(lambda *x: float(np.mean(x)), *jax.device_get(pending))
        n, pending = len(pending), []
        if not np.isfinite(logs["loss"]):
          raise FloatingPointError(f"{tag}: loss is {logs['loss']} at step {step}.")
        logs["steps_per_s"] = n / max(time.time() - t_log, 1e-9)
        t_log = time.time()
        progress.set_postfix(loss=f"{logs['loss']:.3f}", acc=f"{logs['accuracy']:.2f}")
        writer.scalars(step, {tag: logs})
      ckpt.save(step, state, {**meta(), "input": loader.state(step)},
                force=step == total_steps)
      if evaluate is not None and step < total_steps:
        evaluate(step, state)
  finally:
    # Also on an exception or Ctrl-C: a checkpoint being written is finished,
    # so the run resumes from it.
    batches.close()
    progress.close()
    ckpt.close()
  return state
