"""Exact maximum-inner-product top-k in JAX, the entity matrix sharded over devices.

The matrix [C, d] is split by rows over every device of the mesh (and so over
processes: each holds only its devices' rows). A search runs one program per
device (shard_map): it walks its rows in blocks, keeping a running top-k, so
memory is [queries, block] whatever the catalogue size; the per-device top-k
lists are then all-gathered and merged. The merged result is exactly the
top-k of the whole matrix, whatever the device count (tested against one
device).

Rows carry a group code: the row's world (0 when the catalogue has none), or
-1 for a free or deleted slot. A query with group g >= 0 sees only rows of
group g (Zeshel's per-world pools); g = -1 sees every live row.

Storage: float32, bfloat16 (half the memory) or int8 with one float scale
per row (a quarter). Scores are always computed in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from blink_jax import sharding

STORAGES = ("float32", "bfloat16", "int8")
FREE = -1  # Group code of a free or deleted slot.
# Queries per search call: one query does not pay for more (calls are padded
# to a power of two up to this), and at most log2 of it shapes compile.
QUERY_CHUNK = 256


def quantize(x: np.ndarray, storage: str, chunk: int = 65536
             ) -> tuple[np.ndarray, np.ndarray]:
  """(values in the storage dtype, one float32 scale per row) of vectors x.

  Always a new array (never a view of x), converted in chunks so that the
  temporaries stay small however large x is.
  """
  if storage not in STORAGES:
    raise ValueError(f"Unknown storage {storage!r}; one of {STORAGES}.")
  n = x.shape[0]
  values = np.empty(x.shape, _dtype(storage))
  scales = np.ones(n, np.float32)
  for start in range(0, n, chunk):
    part = np.asarray(x[start:start + chunk], np.float32)
    if storage == "int8":
      # Symmetric per-row scale: the row's largest magnitude maps to 127.
      sc = np.abs(part).max(axis=1) / 127.0
      sc = np.where(sc > 0, sc, 1.0).astype(np.float32)
      scales[start:start + chunk] = sc
      part = np.clip(np.rint(part / sc[:, None]), -127, 127)
    values[start:start + chunk] = part
  return values, scales


def rows_per_device(n: int, devices: int, block: int = 16384) -> int:
  """Rows each device holds for n rows: a whole number of search blocks (or one
  small block). The one layout of the exact index, which the encoder writes into."""
  per = max(1, -(-n // devices))
  blk = min(block, per)
  return -(-per // blk) * blk


@functools.lru_cache(maxsize=None)
def _quantize_fn(storage: str, sh: NamedSharding):
  """`quantize` on devices, jitted: float32 rows -> (stored values, scales), in place.

  The same arithmetic as the numpy version (round half to even, the same
  division), so both paths store the same bits.
  """
  rows_sh = NamedSharding(sh.mesh, P(sh.spec[0]))

  def q(x):
    x = x.astype(jnp.float32)
    if storage == "int8":
      sc = jnp.abs(x).max(axis=1) / 127.0
      sc = jnp.where(sc > 0, sc, 1.0).astype(jnp.float32)
      return jnp.clip(jnp.rint(x / sc[:, None]), -127, 127).astype(jnp.int8), sc
    return x.astype(_dtype(storage)), jnp.ones(x.shape[0], jnp.float32)

  # float32 is stored as it is: the input buffer becomes the stored values
  # (donated) rather than being copied. The other storages are smaller than
  # their input, which cannot be reused for them.
  donate = (0,) if storage == "float32" else ()
  return jax.jit(q, out_shardings=(sh, rows_sh), donate_argnums=donate)


def dequantize(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
  return np.asarray(values, np.float32) * np.asarray(scales, np.float32)[:, None]


def _dtype(storage: str):
  return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8}[storage]


class ExactSearch:
  """The device copy of an entity matrix, with top-k search and row updates."""

  def __init__(self, dim: int, storage: str = "float32", mesh: Mesh | None = None, *,
               block: int = 16384, query_chunk: int = QUERY_CHUNK):
    if storage not in STORAGES:
      raise ValueError(f"Unknown storage {storage!r}; one of {STORAGES}.")
    self.dim, self.storage = dim, storage
    self.mesh = mesh or sharding.make_mesh()
    self.axes = tuple(self.mesh.axis_names)
    self.n_dev = self.mesh.size
    self.block, self.query_chunk = block, query_chunk
    self.capacity = 0
    self._rows_sh = NamedSharding(self.mesh, P(self.axes))
    self._rep = sharding.replicated(self.mesh)
    self.values = self.scales = self.groups = None

  # ------------------------------------------------------------------ layout
  def _capacity_for(self, n: int) -> int:
    return rows_per_device(n, self.n_dev, self.block) * self.n_dev

  def load(self, values: np.ndarray, scales: np.ndarray, groups: np.ndarray,
           headroom: float = 0.0) -> None:
    """Places rows 0..n-1 on the devices, with room for `headroom` more.

    Each process reads only the rows of its own devices from `values`, which
    may be a memory-mapped file.
    """
    n = values.shape[0]
    self.capacity = self._capacity_for(max(1, int(n * (1 + headroom))))
    c = self.capacity
    self.values = self._rows_of(values, 0, _dtype(self.storage), (c, self.dim))
    self.scales = self._rows_of(scales, 0, np.float32, (c,))
    self.groups = self._rows_of(groups, FREE, np.int32, (c,))

  def load_rows(self, rows: sharding.ShardedRows, groups: np.ndarray) -> None:
    """Takes float32 vectors that are already row-sharded on the devices.

    `rows` must have this search's layout (`rows_per_device(rows.count, devices)`
    rows per device, as `inference.encode.encode_rows` lays them out): the
    vectors are quantized where they lie, so no host ever holds the matrix.
    There is no spare capacity; the first `update` past it re-lays (`grow`).
    In float32 the array becomes the stored values: `rows` is used up.
    """
    per = rows_per_device(rows.count, self.n_dev, self.block)
    if rows.array.shape != (per * self.n_dev, self.dim):
      raise ValueError(f"Row-sharded vectors of shape {rows.array.shape}; {rows.count} rows "
                       f"on {self.n_dev} devices need ({per * self.n_dev}, {self.dim}).")
    self.capacity = c = per * self.n_dev
    # The same placement as the search reads (device i: rows i*per...): a local
    # quantization under jit, no data moves between devices.
    sh = NamedSharding(self.mesh, P(self.axes, None))
    values = rows.array
    # Only rows on another mesh are moved: across processes, device_put copies
    # even an array already in an equivalent sharding (measured: +1 share).
    if not values.sharding.is_equivalent_to(sh, 2):
      values = jax.device_put(values, sh)
    self.values, self.scales = _quantize_fn(self.storage, sh)(values)
    self.groups = self._rows_of(groups, FREE, np.int32, (c,))

  def _rows_of(self, host, fill, dtype, shape) -> jax.Array:
    """Rows [0, len(host)) of host, padded with `fill` to `shape`, split by rows; each
    process reads only its own devices' rows (host may be memory-mapped)."""
    n, c = host.shape[0], shape[0]

    def cb(idx):
      sl = idx[0]
      start, stop = sl.start or 0, c if sl.stop is None else sl.stop
      out = np.full((stop - start,) + shape[1:], fill, dtype)
      real = max(0, min(stop, n) - start)
      if real:
        out[:real] = host[start:start + real]
      return out
    return jax.make_array_from_callback(shape, NamedSharding(
        self.mesh, P(self.axes, *([None] * (len(shape) - 1)))), cb)

  def grow(self, min_rows: int) -> None:
    """Re-lays the device arrays with room for `min_rows` rows; no host copy."""
    old, c = self.capacity, self._capacity_for(min_rows)
    pad = lambda x, fill: jax.jit(
        lambda a: jnp.pad(a, [(0, c - old)] + [(0, 0)] * (a.ndim - 1),
                          constant_values=fill),
        out_shardings=NamedSharding(self.mesh, P(self.axes, *([None] * (x.ndim - 1)))))(x)
    self.values, self.scales = pad(self.values, 0), pad(self.scales, 0)
    self.groups = pad(self.groups, FREE)
    self.capacity = c

  def iter_rows(self, rows: np.ndarray, chunk: int = 65536):
    """Yields (start, stored values, scales) of `rows`, chunk by chunk.

    A collective: every process must call it (with the same rows), and every
    process receives each chunk; at most `chunk` rows are on a host at once
    (measured: the transient is a few chunks, whatever the matrix size).
    """
    take = jax.jit(lambda v, s, r: (v[r], s[r]), out_shardings=(self._rep, self._rep))
    for start in range(0, len(rows), chunk):
      r = jax.device_put(np.asarray(rows[start:start + chunk], np.int32), self._rep)
      v, sc = take(self.values, self.scales, r)
      yield start, np.asarray(v), np.asarray(sc)

  def update(self, rows: np.ndarray, values: np.ndarray, scales: np.ndarray,
             groups: np.ndarray) -> None:
    """Writes rows (< capacity) in place; group FREE deletes a row."""
    rows = np.asarray(rows, np.int32)
    if rows.size == 0:
      return
    if rows.max() >= self.capacity:
      raise ValueError(f"Row {rows.max()} is beyond the capacity {self.capacity}.")
    put = lambda x: jax.device_put(np.asarray(x), self._rep)
    self.values, self.scales, self.groups = _scatter(
        self.values, self.scales, self.groups, put(rows),
        put(np.asarray(values, _dtype(self.storage))), put(np.asarray(scales, np.float32)),
        put(np.asarray(groups, np.int32)))

  # ------------------------------------------------------------------ search
  def search(self, queries: np.ndarray, k: int,
             groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], rows [Q, k]) best first; -inf / -1 where fewer rows match."""
    queries = np.asarray(queries, np.float32)
    q_n = queries.shape[0]
    groups = (np.full(q_n, FREE, np.int32) if groups is None
              else np.asarray(groups, np.int32))
    fn = _search_fn(self.mesh, self.axes, k, min(self.block, self.capacity // self.n_dev),
                    self.capacity // self.n_dev)
    # Calls are padded to a power of two up to query_chunk rows: one query
    # does not pay for 256, and there are at most log2(query_chunk) shapes.
    chunk = min(self.query_chunk, 1 << max(0, q_n - 1).bit_length())
    scores, rows = [], []
    for start in range(0, q_n, chunk):
      q = np.zeros((chunk, self.dim), np.float32)
      g = np.full(chunk, FREE, np.int32)
      real = min(chunk, q_n - start)
      q[:real], g[:real] = queries[start:start + real], groups[start:start + real]
      s, r = fn(self.values, self.scales, self.groups,
                jax.device_put(q, self._rep), jax.device_put(g, self._rep))
      scores.append(np.asarray(s)[:real])
      rows.append(np.asarray(r)[:real])
    if not scores:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores), np.concatenate(rows).astype(np.int64)

  def memory_bytes(self) -> int:
    """Bytes of the device arrays (all devices together)."""
    return sum(int(x.size) * x.dtype.itemsize
               for x in (self.values, self.scales, self.groups) if x is not None)


@functools.partial(jax.jit, donate_argnums=(0, 1, 2))
def _scatter(values, scales, groups, rows, new_values, new_scales, new_groups):
  return (values.at[rows].set(new_values), scales.at[rows].set(new_scales),
          groups.at[rows].set(new_groups))


def _merge(scores_a, rows_a, scores_b, rows_b, k):
  s = jnp.concatenate([scores_a, scores_b], axis=1)
  r = jnp.concatenate([rows_a, rows_b], axis=1)
  s, i = jax.lax.top_k(s, k)
  return s, jnp.take_along_axis(r, i, axis=1)


@functools.lru_cache(maxsize=None)
def _search_fn(mesh: Mesh, axes: tuple[str, ...], k: int, block: int, per_device: int):
  """The jitted sharded search for one (k, block, rows per device)."""
  n_blocks = per_device // block
  kb = min(k, block)

  def local(values, scales, groups, q, qg):
    # values [per_device, d] on this device; q [Q, d] replicated.
    first = jax.lax.axis_index(axes) * per_device

    def body(carry, b):
      best_s, best_r = carry
      v = jax.lax.dynamic_slice_in_dim(values, b * block, block).astype(jnp.float32)
      sc = jax.lax.dynamic_slice_in_dim(scales, b * block, block)
      gr = jax.lax.dynamic_slice_in_dim(groups, b * block, block)
      s = jnp.dot(q, v.T, preferred_element_type=jnp.float32) * sc[None, :]
      ok = (gr[None, :] != FREE) & ((qg[:, None] == FREE) | (gr[None, :] == qg[:, None]))
      s = jnp.where(ok, s, -jnp.inf)
      top_s, top_i = jax.lax.top_k(s, kb)
      top_r = jnp.where(jnp.isfinite(top_s), first + b * block + top_i, -1)
      return _merge(best_s, best_r, top_s, top_r, k), None

    init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
            jnp.full((q.shape[0], k), -1, jnp.int32))
    (s, r), _ = jax.lax.scan(body, init, jnp.arange(n_blocks))
    # Every device's k best, then the k best of those.
    all_s = jax.lax.all_gather(s, axes, axis=1, tiled=True)
    all_r = jax.lax.all_gather(r, axes, axis=1, tiled=True)
    s, i = jax.lax.top_k(all_s, k)
    return s, jnp.take_along_axis(all_r, i, axis=1)

  rows = P(axes)
  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P(axes, None), rows, rows, P(), P()),
      out_specs=(P(), P()), check_vma=False))
