"""BLINK's bi-encoder: a context tower and an entity tower, scored by dot product.

Each tower is a `bert.Bert`. The embedding is the [CLS] output as in BLINK,
or the masked mean of the token outputs for checkpoints trained that way
(the MiniLM sentence encoder), optionally followed by a linear projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blink_jax.models import bert
from blink_jax.models import bert_checkpoint

Array = jax.Array
POOLINGS = ("cls", "mean", "pooler")


def pool(out: bert.BertOutput, mask: Array, pooling: str) -> Array:
  """[CLS], masked-mean or BERT-pooler pooling of a BERT output."""
  if pooling == "cls":
    return out.cls
  if pooling == "pooler":
    if out.pooled is None:
      raise ValueError("pooling='pooler' needs a BERT built with its pooler (pooler=True).")
    return out.pooled
  if pooling == "mean":
    m = mask.astype(out.sequence.dtype)[..., None]
    return (out.sequence * m).sum(-2) / jnp.maximum(m.sum(-2), 1.0)
  raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


class Tower(nnx.Module):
  """One encoder tower: BERT, pooling, optional projection."""

  def __init__(self, encoder: bert.Bert, pooling: str, projection_dim: int | None,
               *, rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    self.encoder = encoder
    self.pooling = pooling
    self.projection = (
        nnx.Linear(encoder.cfg.hidden_size, projection_dim, rngs=rngs)
        if projection_dim else None)

  def __call__(self, ids: Array, mask: Array) -> Array:
    x = pool(self.encoder(ids, mask), mask, self.pooling)
    return self.projection(x) if self.projection is not None else x


class BiEncoder(nnx.Module):
  """Context and entity towers; `score` is their dot product."""

  def __init__(self, context_encoder: Tower, entity_encoder: Tower):
    self.context_encoder = context_encoder
    self.entity_encoder = entity_encoder

  def embed_context(self, ids: Array, mask: Array) -> Array:
    return self.context_encoder(ids, mask)

  def embed_entities(self, ids: Array, mask: Array) -> Array:
    return self.entity_encoder(ids, mask)

  def __call__(self, context_ids, context_mask, entity_ids, entity_mask) -> Array:
    """Scores of every context against every entity of the batch: [Bc, Be]."""
    q = self.embed_context(context_ids, context_mask)
    e = self.embed_entities(entity_ids, entity_mask)
    return q @ e.T


def build(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
          seed: int = 0, pretrained: bool = True) -> BiEncoder:
  """Builds the bi-encoder of `config.model`.

  With `model.init_from` both towers start from the same pretrained weights,
  as in BLINK; without it they are initialised at random from `model.bert`.
  `pretrained=False`: the same shapes at random (a skeleton to restore into).
  """
  rngs = bert.make_rngs(seed)
  proj = model_cfg.get("projection_dim") or None
  pooling = model_cfg.get("pooling", "cls")
  encoder = lambda s: bert_checkpoint.build_encoder(model_cfg, vocab_size, s,
                                                    pretrained=pretrained)
  return BiEncoder(Tower(encoder(seed), pooling, proj, rngs=rngs),
                   Tower(encoder(seed + 1), pooling, proj, rngs=rngs))
