"""Orbax checkpoints of a training run: WORKDIR/checkpoints/<step>/.

Saves are asynchronous (training goes on while arrays are written) and
atomic (Orbax writes to a temporary directory and renames it on commit), so
a run killed at any moment leaves only whole checkpoints; `restore` always
takes the latest one. Beside the train state each checkpoint holds a JSON
`meta` item: the data position, mined hard negatives' epoch, and a
fingerprint of the model config, so that a workdir reused with an
incompatible config fails with the differing fields named instead of an
opaque shape error.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointConfigError(ValueError):
  """The checkpoint was written by a run with a different model config."""


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


class Checkpointer:
  """Saves every `every` steps, keeps the last `keep`, resumes from the latest."""

  def __init__(self, workdir: str, *, every: int, keep: int | None,
               fingerprint: Mapping[str, Any], async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    # JSON round trip: tuples become lists, as they will be when read back.
    self.fingerprint = json.loads(json.dumps(_flat(fingerprint)))
    self.every = every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, create=True,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def _check(self, meta: Mapping[str, Any], step: int) -> None:
    theirs = meta.get("fingerprint", {})
    diff = sorted(k for k in set(theirs) | set(self.fingerprint)
                  if theirs.get(k) != self.fingerprint.get(k))
    if diff:
      lines = "\n".join(f"  {k}: checkpoint={theirs.get(k)!r} config={self.fingerprint.get(k)!r}"
                        for k in diff)
      raise CheckpointConfigError(
          f"Checkpoint {self.directory}/{step} was written with a different "
          f"model config:\n{lines}\nUse a new --workdir, or the config it was "
          "trained with.")

  def restore(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the latest checkpoint into `abstract_state`'s shapes/shardings.

    Returns (state, meta), or None when there is no checkpoint yet.
    """
    step = self.latest_step()
    if step is None:
      return None
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    self._check(meta, step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointConfigError(
          f"Checkpoint {self.directory}/{step} does not match the train state "
          f"of this config: {e}") from e
    logging.info("Restored checkpoint %s/%d.", self.directory, step)
    return restored, meta

  def save(self, step: int, state: Any, meta: Mapping[str, Any], *,
           force: bool = False) -> bool:
    """Saves at multiples of `every` (or always with force); async."""
    if not force and (self.every <= 0 or step % self.every):
      return False
    if self._manager.latest_step() == step:
      return False
    meta = {**meta, "fingerprint": self.fingerprint, "step": step}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)
    return True

  def close(self) -> None:
    """Waits for pending saves; call before exiting."""
    self._manager.wait_until_finished()
    self._manager.close()


def abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
