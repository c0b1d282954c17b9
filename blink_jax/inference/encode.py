"""Runs a model over rows in fixed-size batches split over devices and hosts.

`encode` is the one loop every inference path uses: embedding a catalogue
or mentions, span logits of text windows, cross-encoder scores of pairs.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

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


def _next_pow2(x: int) -> int:
  return 1 << max(x - 1, 0).bit_length()


def embed_entities(model, tok: tokenization.Tokenizer, entities: Records[Entity],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Entity-tower embeddings of a catalogue, [E, d], read in a stream."""
  return encode(model.entity_encoder,
                lambda rows: tok.entities(entities.take(rows), config.data.max_entity_len),
                len(entities), batch_size=config.eval.batch_size, mesh=mesh, desc="entities")


def embed_mentions(model, tok: tokenization.Tokenizer, mentions: Records[Mention],
                   config, mesh: Mesh | None = None) -> np.ndarray:
  """Context-tower embeddings of mentions, [N, d]."""
  return encode(model.context_encoder,
                lambda rows: tok.mentions(mentions.take(rows), config.data.max_context_len),
                len(mentions), batch_size=config.eval.batch_size, mesh=mesh, desc="mentions")
