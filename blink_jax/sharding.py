"""The device mesh and every sharding rule, in one place.

The mesh has two axes: `data` (batch parallel) and `fsdp` (batch parallel
too, and parameters split across it when they do not fit one device). The
batch is split over both axes; a parameter is split over `fsdp` along its
largest dimension that divides evenly, and replicated otherwise (biases,
LayerNorms, anything small).

Axis types are Auto: jitted code is written as if on one device, and XLA
inserts the collectives; e.g. the global in-batch logits `q @ e.T` gather
the entity embeddings of every device (and host) automatically.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
# Parameters smaller than this stay replicated: splitting them saves little
# memory and costs a collective each.
MIN_FSDP_SIZE = 2 ** 16


def make_mesh(mesh_cfg: Mapping[str, int] | None = None,
              devices: list | None = None) -> Mesh:
  """Builds the ("data", "fsdp") mesh; one axis size may be -1 (the rest)."""
  cfg = dict(mesh_cfg or {})
  devices = devices if devices is not None else jax.devices()
  data, fsdp = cfg.get("data", -1), cfg.get("fsdp", 1)
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ValueError("At most one mesh axis may be -1.")
  if data == -1:
    data = n // fsdp
  elif fsdp == -1:
    fsdp = n // data
  if data * fsdp != n:
    raise ValueError(f"Mesh data={data} x fsdp={fsdp} does not cover the {n} devices.")
  return jax.make_mesh((data, fsdp), ("data", "fsdp"),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """FSDP rule: split the largest evenly divisible dimension over `fsdp`."""
  if fsdp_size == 1 or math.prod(shape) < MIN_FSDP_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(mesh: Mesh, tree: Any) -> Any:
  """Shardings for a pytree of (abstract) parameter-like arrays.

  Optimizer moments get the same spec as their parameter because they have
  the same shape; scalars (step counts) are replicated.
  """
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(tuple(np.shape(x)), fsdp)), tree)


def process_rows(mesh: Mesh, rows: int) -> slice:
  """The rows of a batch of `rows` that this process's devices hold.

  Read from the batch sharding itself, not assumed from the process index:
  a mesh may order devices so that process p's rows are not block p.
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((rows,))
  spans = sorted({(ix[0].start or 0, rows if ix[0].stop is None else ix[0].stop)
                  for ix in index_map.values()})
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"This process's devices hold non-contiguous rows of the batch "
                     f"({spans}); order the mesh devices by process.")
  return slice(start, stop)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into globally sharded arrays.

  Every process passes its own slice of the global batch (rows in process
  order); the result is one array whose leading dimension is the global batch.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


@dataclasses.dataclass(frozen=True)
class ShardedRows:
  """A global [devices * per_device, ...] array split by rows over every device.

  Device i (in the mesh's batch order) holds rows [i * per_device, (i + 1) *
  per_device); rows from `count` on are padding (zeros), so `mask` marks the
  real ones. No process holds more than its devices' rows: this is how an
  entity catalogue's embeddings go from the encoder to the exact index
  without a full copy on any host.
  """

  array: jax.Array
  count: int

  @property
  def per_device(self) -> int:
    return self.array.shape[0] // self.array.sharding.mesh.size

  @property
  def mask(self) -> np.ndarray:
    return np.arange(self.array.shape[0]) < self.count

  def to_host(self, chunk: int = 65536) -> np.ndarray:
    """The real rows, [count, ...], on every process (a full replica: for small arrays
    and for back ends that need one). Gathered `chunk` rows at a time."""
    rep = replicated(self.array.sharding.mesh)
    take = jax.jit(lambda a, start: jax.lax.dynamic_slice_in_dim(a, start, chunk),
                   out_shardings=rep)
    padded = self.array
    if padded.shape[0] < chunk:
      chunk = padded.shape[0]
    out = np.empty((self.count,) + padded.shape[1:], padded.dtype)
    for start in range(0, self.count, chunk):
      # dynamic_slice clamps a start past the end: read the last whole chunk then.
      at = min(start, padded.shape[0] - chunk)
      part = np.asarray(take(padded, at))
      out[start:min(start + chunk, self.count)] = part[start - at:start - at + min(
          chunk, self.count - start)]
    return out
