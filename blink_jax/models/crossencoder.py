"""BLINK's cross-encoder: one BERT reads mention and entity together.

The input is a mention-entity pair from `tokenization.pair_inputs` (context
on segment 0, entity on segment 1); the score is a linear map of the [CLS]
output after dropout. Candidates of one mention are scored independently and
compared by a softmax over them in the loss (`losses.candidate_loss`).
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from blink_jax.models import bert
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder

Array = jax.Array


class CrossEncoder(nnx.Module):
  """Scores pairs: [..., T] token ids -> [...] scores."""

  def __init__(self, encoder: bert.Bert, *, pooling: str = "cls", rngs: nnx.Rngs):
    if pooling not in biencoder.POOLINGS:
      raise ValueError(f"pooling must be one of {biencoder.POOLINGS}, got {pooling!r}.")
    self.encoder = encoder
    self.pooling = pooling
    self.dropout = bert.Dropout(encoder.cfg.dropout, rngs=rngs)
    self.score = nnx.Linear(encoder.cfg.hidden_size, 1, rngs=rngs)

  def __call__(self, ids: Array, mask: Array, segment_ids: Array) -> Array:
    lead = ids.shape[:-1]  # Any leading dims, e.g. [mentions, candidates].
    flat = lambda x: x.reshape(-1, x.shape[-1])
    mask = flat(mask)
    x = biencoder.pool(self.encoder(flat(ids), mask, flat(segment_ids)), mask, self.pooling)
    return self.score(self.dropout(x))[:, 0].astype("float32").reshape(lead)


def build(model_cfg: ml_collections.ConfigDict, *, vocab_size: int,
          seed: int = 0, pretrained: bool = True) -> CrossEncoder:
  """The cross-encoder of `config.cross.model` (same fields as `config.model`)."""
  encoder = bert_checkpoint.build_encoder(model_cfg, vocab_size, seed, pretrained=pretrained)
  return CrossEncoder(encoder, pooling=model_cfg.get("pooling", "cls"),
                      rngs=bert.make_rngs(seed))
