"""Runs a model over rows in fixed-size batches split over devices and hosts.

`encode` is the one loop every inference path uses: embedding a catalogue
or mentions, span logits of text windows, cross-encoder scores of pairs.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from blink_jax import exact_search
from blink_jax import progress
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records


def tower_fn(tower: nnx.Module, mesh: Mesh) -> Callable[..., jax.Array]:
  """A jitted `(*inputs) -> outputs` of a module in eval mode (an encoder
  tower: (ids, mask) -> embeddings; the cross-encoder: (ids, mask, segment_ids)
  -> scores).

  Inputs are global arrays split over the mesh's devices (and hosts); the
  output is replicated so that every process can read all of it.
  """
  tower.eval()
  graphdef, state = nnx.split(tower)

  @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
  def embed(state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)

  return lambda *inputs: embed(state, *inputs)


def encode(tower: nnx.Module | Callable[..., jax.Array],
           tokenize: Callable[[np.ndarray], tokenization.TokenBatch],
           n: int, *, batch_size: int, mesh: Mesh | None = None,
           desc: str = "encoding", inputs: Sequence[str] = ("ids", "mask")) -> np.ndarray:
  """Runs `tower` over rows 0..n-1, `batch_size` rows per call, with a progress bar.

  `tower` is an nnx.Module or a function made by `tower_fn`.

  `tokenize(rows)` reads and tokenizes those rows; the fields named in
  `inputs` are passed to the tower. Each call's rows are split over the
  processes, and each process tokenizes only its own block, so a catalogue is
  read once in all, in a stream. batch_size is rounded up to a multiple of
  the device count; a last (or only) call with fewer rows is padded to the
  next power of two times the device count, not to batch_size, so a small
  call (one text through the linker) costs little and the function compiles
  for at most log2(batch_size) shapes.
  """
  mesh = mesh or sharding.make_mesh()
  # A function from tower_fn is compiled already: callers that encode in
  # many calls (the linker) pass one to avoid compiling each time.
  embed = tower_fn(tower, mesh) if isinstance(tower, nnx.Module) else tower
  batch_size = -(-batch_size // mesh.size) * mesh.size
  chunks = []
  for start in progress.bar(range(0, n, batch_size), desc=desc, unit="batch"):
    size = min(batch_size, mesh.size * _next_pow2(-(-(n - start) // mesh.size)))
    mine = sharding.process_rows(mesh, size)
    per = mine.stop - mine.start
    first = start + mine.start
    rows = np.arange(first, min(first + per, n))
    # A process past the end still tokenizes one row, for the common width.
    local = tokenize(rows if len(rows) else np.zeros(1, np.int64))
    arrays = {}
    for name in inputs:
      x = getattr(local, name)
      arrays[name] = np.zeros((per,) + x.shape[1:], x.dtype)
      arrays[name][:len(rows)] = x[:len(rows)]
    # Padding rows hold one [CLS]-like token so no row is fully masked.
    arrays["mask"][len(rows):, 0] = 1
    batch = sharding.global_batch(arrays, mesh)
    out = embed(*(batch[name] for name in inputs))
    chunks.append(np.asarray(out)[:min(size, n - start)])
  return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def encode_rows(tower: nnx.Module | Callable[..., jax.Array],
                tokenize: Callable[[np.ndarray], tokenization.TokenBatch],
                n: int, *, batch_size: int, mesh: Mesh | None = None,
                rows_per_device: int | None = None, desc: str = "encoding",
                inputs: Sequence[str] = ("ids", "mask")) -> sharding.ShardedRows:
  """`encode`, but the output stays on the devices, split by rows: row i of the
  result is row i's output, on device i // rows_per_device.

  Device d encodes its own block of rows [d * per, (d + 1) * per), batch_size /
  devices rows per call, and keeps what it computes; so each process reads and
  tokenizes only its devices' rows and no host ever holds the whole [n, d]
  output (at 6M entities x 768 float32 that is 18 GB per host). Rows from n on
  are padding, zeroed (`ShardedRows.mask`). `rows_per_device` defaults to
  ceil(n / devices); the exact index passes its own layout
  (`exact_search.rows_per_device`).
  """
  mesh = mesh or sharding.make_mesh()
  n_dev = mesh.size
  per = rows_per_device or max(1, -(-n // n_dev))
  if per * n_dev < n:
    raise ValueError(f"{per} rows per device on {n_dev} devices cannot hold {n} rows.")
  # Rows per device and call: a small catalogue is not padded to batch_size.
  b = min(max(1, batch_size // n_dev), _next_pow2(per))
  steps = -(-per // b)
  embed = _tower_rows_fn(tower, mesh)
  rows_sh = sharding.batch_sharding(mesh)
  axes = sharding.BATCH_AXES
  # Position k of a call's global batch is on device k // b, which encodes row
  # (k // b) * per + t * b + k % b at call t. This process's positions:
  mine = sharding.process_rows(mesh, n_dev * b)
  pos = np.arange(mine.start, mine.stop)
  buf = None
  for t in progress.bar(range(steps), desc=desc, unit="batch"):
    offset = t * b + pos % b
    rows = (pos // b) * per + offset
    real = (rows < n) & (offset < per)
    # A process with no real rows still tokenizes one, for the common width.
    local = tokenize(rows[real] if real.any() else np.zeros(1, np.int64))
    arrays = {}
    for name in inputs:
      x = getattr(local, name)
      arrays[name] = np.zeros((len(pos),) + x.shape[1:], x.dtype)
      arrays[name][real] = x[:int(real.sum())]
    # Padding rows hold one [CLS]-like token so no row is fully masked.
    arrays["mask"][~real, 0] = 1
    batch = sharding.global_batch(arrays, mesh)
    out = embed(*(batch[name] for name in inputs))
    if buf is None:  # Born sharded: each device allocates only its block.
      buf = jax.jit(lambda: jnp.zeros((n_dev * steps * b,) + out.shape[1:], out.dtype),
                    out_shardings=rows_sh)()
    buf = _write_block(mesh, axes, b)(buf, out, t)
  if buf is None:
    raise ValueError("Nothing to encode: n is 0.")
  return sharding.ShardedRows(_trim(mesh, axes, per, n)(buf), n)


def _tower_rows_fn(tower, mesh: Mesh) -> Callable[..., jax.Array]:
  """A jitted tower whose output stays split by rows like its input."""
  if not isinstance(tower, nnx.Module):
    return tower
  tower.eval()
  graphdef, state = nnx.split(tower)

  @functools.partial(jax.jit, out_shardings=sharding.batch_sharding(mesh))
  def embed(state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)

  return lambda *inputs: embed(state, *inputs)


@functools.lru_cache(maxsize=None)
def _write_block(mesh: Mesh, axes: tuple[str, ...], b: int):
  """buf, out, t -> buf with each device's b rows of `out` at its rows [t*b, (t+1)*b).

  Per device (shard_map): nothing crosses devices; buf is donated, so it is
  updated in place.
  """
  def local(buf, out, t):
    return jax.lax.dynamic_update_slice_in_dim(buf, out.astype(buf.dtype), t * b, 0)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                               out_specs=P(axes)), donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _trim(mesh: Mesh, axes: tuple[str, ...], per: int, n: int):
  """Each device's first `per` rows, rows from n on zeroed: the final layout."""
  def local(buf):
    first = jax.lax.axis_index(axes) * per
    block = buf[:per]
    real = first + jnp.arange(per) < n
    return jnp.where(real.reshape((per,) + (1,) * (block.ndim - 1)), block, 0)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(axes), out_specs=P(axes)),
                 donate_argnums=(0,))


def _next_pow2(x: int) -> int:
  return 1 << max(x - 1, 0).bit_length()


def embed_entities(model, tok: tokenization.Tokenizer, entities: Records[Entity],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Entity-tower embeddings of a catalogue, [E, d], read in a stream."""
  return encode(model.entity_encoder,
                lambda rows: tok.entities(entities.take(rows), config.data.max_entity_len),
                len(entities), batch_size=config.eval.batch_size, mesh=mesh, desc="entities")


def embed_catalogue(model, tok: tokenization.Tokenizer, entities: Records[Entity],
                    config, mesh: Mesh | None = None, *,
                    rows_per_device: int | None = None) -> sharding.ShardedRows:
  """Entity-tower embeddings of a catalogue, left split by rows over the devices.

  What the exact index is built from (`Index.build` takes it as is): each
  process encodes and keeps only its devices' rows. Pass the index's layout
  (`exact_search.rows_per_device`, the default).
  """
  mesh = mesh or sharding.make_mesh()
  if rows_per_device is None:
    rows_per_device = exact_search.rows_per_device(len(entities), mesh.size)
  return encode_rows(model.entity_encoder,
                     lambda rows: tok.entities(entities.take(rows), config.data.max_entity_len),
                     len(entities), batch_size=config.eval.batch_size, mesh=mesh,
                     rows_per_device=rows_per_device, desc="entities")


def embed_mentions(model, tok: tokenization.Tokenizer, mentions: Records[Mention],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Context-tower embeddings of mentions, [N, d]."""
  return encode(model.context_encoder,
                lambda rows: tok.mentions(mentions.take(rows), config.data.max_context_len),
                len(mentions), batch_size=config.eval.batch_size, mesh=mesh, desc="mentions")
