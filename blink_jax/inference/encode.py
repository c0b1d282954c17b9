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


def tower_fn(tower: nnx.Module, mesh: Mesh,
             out_sharding: jax.sharding.Sharding | None = None) -> Callable[..., jax.Array]:
  """A jitted `(*inputs) -> outputs` of a module in eval mode (an encoder
  tower: (ids, mask) -> embeddings; the cross-encoder: (ids, mask, segment_ids)
  -> scores).

  Inputs are global arrays split over the mesh's devices (and hosts); the
  output is replicated so that every process can read all of it, unless
  `out_sharding` says otherwise (`encode_rows` keeps it split by rows).
  """
  tower.eval()
  graphdef, state = nnx.split(tower)

  @functools.partial(jax.jit, out_shardings=out_sharding or sharding.replicated(mesh))
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
  b = min(max(1, batch_size // n_dev), per)
  steps = -(-per // b)
  embed = tower_fn(tower, mesh, sharding.batch_sharding(mesh)) if isinstance(
      tower, nnx.Module) else tower
  axes = sharding.BATCH_AXES
  write = _write_block(mesh, axes, b, per, n)
  # Born sharded: each device allocates only its own block, written in place.
  buf = None
  # Position k of a call's global batch is on device k // b; at a call that
  # starts at `start`, it encodes row (k // b) * per + start + k % b. This
  # process's positions:
  mine = sharding.process_rows(mesh, n_dev * b)
  pos = np.arange(mine.start, mine.stop)
  for t in progress.bar(range(steps), desc=desc, unit="batch"):
    # The last call ends at the block's end, overlapping the one before if
    # b does not divide per: the buffer is then exactly the final layout, and
    # no copy is ever made to trim it.
    start = min(t * b, per - b)
    rows = (pos // b) * per + start + pos % b
    real = rows < n
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
    if buf is None:
      buf = jax.jit(lambda: jnp.zeros((n_dev * per,) + out.shape[1:], out.dtype),
                    out_shardings=sharding.batch_sharding(mesh))()
    buf = write(buf, out, start)
  return sharding.ShardedRows(buf, n)


@functools.lru_cache(maxsize=None)
def _write_block(mesh: Mesh, axes: tuple[str, ...], b: int, per: int, n: int):
  """(buf, out, start) -> buf with each device's b rows of `out` at its rows
  [start, start + b), rows from n on (padding) zeroed.

  Per device (shard_map): nothing crosses devices; buf is donated, so it is
  updated in place.
  """
  def local(buf, out, start):
    first = jax.lax.axis_index(axes) * per + start
    real = (first + jnp.arange(b) < n).reshape((b,) + (1,) * (out.ndim - 1))
    return jax.lax.dynamic_update_slice_in_dim(
        buf, jnp.where(real, out, 0).astype(buf.dtype), start, 0)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P()),
                               out_specs=P(axes)), donate_argnums=(0,))


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
