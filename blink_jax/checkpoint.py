"""Orbax checkpoints of a stage: WORKDIR/<stage>/checkpoints/<step>/.

Saves are asynchronous (training goes on while arrays are written) and
atomic (Orbax writes to a temporary directory and renames it on commit), so
a run killed at any moment leaves only whole checkpoints; `restore` always
takes the latest one. A checkpoint holds `params`, `opt_state`, a JSON
`meta` (step, the stage's fingerprint: its config fields and the identities
of the upstream artifacts it was trained from, the input position, anything
small the stage must resume with) and, when the stage has any, `arrays`: the
numpy arrays of its meta (e.g. mined hard negatives, [N, H] rows), stored
as arrays rather than as JSON lists. Inference restores `params` alone.

A workdir reused with another config, or whose upstream stage has been
retrained since, fails with the differing fields named instead of an opaque
shape error or a silently stale model.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from blink_jax import config_utils
from blink_jax import storage
from blink_jax import workdir as workdir_lib

ITEMS = ("params", "opt_state", "meta", "arrays")


class CheckpointConfigError(ValueError):
  """The checkpoint was written by a run with a different config or upstream."""


def _manager(directory: str, *, keep: int | None = None, async_save: bool = True,
             create: bool = False) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, save_interval_steps=1, create=create,
          enable_async_checkpointing=async_save, cleanup_tmp_directories=create),
      item_names=ITEMS)


def _mismatch(directory: str, step: int, theirs: Mapping[str, Any],
              ours: Mapping[str, Any]) -> CheckpointConfigError:
  lines = workdir_lib.describe_change(theirs, ours)
  upstream = sorted({k.split(".")[1] for k in theirs.keys() | ours.keys()
                     if k.startswith("upstream.") and theirs.get(k) != ours.get(k)})
  stage_dir = os.path.dirname(directory)
  if upstream:
    return CheckpointConfigError(
        f"Checkpoint {directory}/{step} was trained from another {' and '.join(upstream)} "
        f"than the workdir holds now (retrained since):\n{lines}\nDelete {stage_dir} to "
        "retrain this stage from the new one, or restore the old upstream.")
  return CheckpointConfigError(
      f"Checkpoint {directory}/{step} was written with a different config:\n{lines}\n"
      f"Use a new --workdir, the config it was trained with, or delete {stage_dir}.")


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, resumes from the latest."""

  def __init__(self, directory: str, *, every: int, keep: int | None,
               fingerprint: Mapping[str, Any], async_save: bool = True):
    self.directory = storage.abspath(directory)  # A gs:// URL as it is: Orbax writes there.
    # JSON round trip: tuples become lists, as they will be when read back.
    self.fingerprint = json.loads(json.dumps(config_utils.flatten(fingerprint), default=str))
    self.every = every
    self._manager = _manager(self.directory, keep=keep, async_save=async_save, create=True)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the latest checkpoint into `abstract_state`'s shapes/shardings.

    `abstract_state` is {"params", "opt_state", "step"}. Returns (state,
    meta), or None when there is no checkpoint yet.
    """
    step = self.latest_step()
    if step is None:
      return None
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    theirs = meta.get("fingerprint", {})
    if theirs != self.fingerprint:
      raise _mismatch(self.directory, step, theirs, self.fingerprint)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_state["params"]),
          opt_state=ocp.args.StandardRestore(abstract_state["opt_state"])))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointConfigError(
          f"Checkpoint {self.directory}/{step} does not match the train state "
          f"of this config: {e}") from e
    if meta.get("arrays"):
      arrays = self._manager.restore(step, args=ocp.args.Composite(
          arrays=ocp.args.StandardRestore()))["arrays"]
      meta = {**meta, **{k: np.asarray(v) for k, v in arrays.items()}}
    logging.info("Restored checkpoint %s/%d.", self.directory, step)
    step_array = jax.device_put(jnp.asarray(step, jnp.int32),
                                abstract_state["step"].sharding)
    return {"params": restored["params"], "opt_state": restored["opt_state"],
            "step": step_array}, meta

  def save(self, step: int, state: Any, meta: Mapping[str, Any], *,
           force: bool = False) -> bool:
    """Saves at multiples of `every` (or always with force); async."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    if self._manager.latest_step() == step:
      return False
    arrays = {k: v for k, v in meta.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in meta.items() if k not in arrays}
    meta.update(fingerprint=self.fingerprint, step=step, arrays=sorted(arrays))
    items = dict(params=ocp.args.StandardSave(state["params"]),
                 opt_state=ocp.args.StandardSave(state["opt_state"]),
                 meta=ocp.args.JsonSave(meta))
    if arrays:
      items["arrays"] = ocp.args.StandardSave(arrays)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    return True

  def close(self) -> None:
    """Waits for pending saves; call before exiting."""
    self._manager.wait_until_finished()
    self._manager.close()


def read_meta(directory: str) -> dict[str, Any] | None:
  """The JSON meta of the latest checkpoint in `directory`, or None if there is none."""
  if not storage.isdir(directory):
    return None
  manager = _manager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      return None
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    manager.close()


def restore_params(directory: str, abstract_params: Any) -> tuple[Any, dict[str, Any]]:
  """The parameters (only) of the latest checkpoint in `directory`, and its meta.

  `abstract_params` carries shapes, dtypes and target shardings; the optimizer
  state on disk is never read.
  """
  manager = _manager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()))
  finally:
    manager.close()
  return restored["params"], restored["meta"]


# ------------------------------------- derived arrays (candidates, teacher scores)
def save_arrays(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
  """Stores `arrays` with the JSON `meta` that made them, as one Orbax checkpoint.

  Written to a temporary directory and renamed on commit, so a killed run
  leaves the old artifact or the new one, never half of one. Every process
  calls it (Orbax writes from the primary host).
  """
  ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    ckpt.save(storage.abspath(path), args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(dict(arrays)), meta=ocp.args.JsonSave(dict(meta))),
        force=True)
  finally:
    ckpt.close()


def arrays_meta(path: str) -> dict[str, Any] | None:
  """The JSON meta stored with the arrays at `path`; None if there are none."""
  if not storage.isdir(path):
    return None
  ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    return ckpt.restore(storage.abspath(path),
                        args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    ckpt.close()


def load_arrays(path: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
  """The arrays stored at `path` if they were made with this `meta`, else None.

  None (and a log line) also for an unreadable artifact: the caller recomputes.
  """
  ckpt = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  try:
    theirs = arrays_meta(path)
    if theirs is None:
      return None
    if theirs != json.loads(json.dumps(dict(meta), sort_keys=True)):
      logging.info("%s was made by another model or data (%s); recomputing.", path, theirs)
      return None
    arrays = ckpt.restore(storage.abspath(path),
                          args=ocp.args.Composite(arrays=ocp.args.StandardRestore()))["arrays"]
    return {k: np.asarray(v) for k, v in arrays.items()}
  except Exception as e:  # pylint: disable=broad-except
    # Orbax raises many types for a damaged directory; any of them means "recompute".
    logging.warning("%s is unreadable (%s: %s); recomputing.", path, type(e).__name__, e)
    return None
  finally:
    ckpt.close()


def abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
