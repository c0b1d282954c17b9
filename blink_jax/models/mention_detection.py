"""ELQ-style mention detection on the context tower (Li et al. 2020).

A linear head reads the context encoder's token outputs and gives each token
a start, an end and an inside logit. A span (i, i + w), w < max_width, scores

    start[i] + end[i + w] + sum(inside[i .. i + w])

and is a mention with probability sigmoid(score). Which (i, w) may be a span
(word boundaries, inside the text, within the window) is decided on the host
from the tokenizer's offsets (`data/documents.py`) and passed in as a mask,
so the model itself knows nothing of word pieces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blink_jax.models import bert
from blink_jax.models import biencoder

Array = jax.Array


def span_logits(token_logits: Array, max_width: int) -> Array:
  """[B, T, 3] (start, end, inside) token logits -> [B, T, W] span logits.

  Entry (b, i, w) scores tokens i..i+w; spans running past T are scored as if
  the last token repeated (callers mask them out).
  """
  start, end, inside = (token_logits[..., j] for j in range(3))
  t = start.shape[-1]
  # Prefix sums make every span's inside-sum one subtraction: [B, T + 1].
  csum = jnp.concatenate([jnp.zeros_like(inside[..., :1]), jnp.cumsum(inside, -1)], -1)
  i = jnp.arange(t)[:, None]
  j = jnp.minimum(i + jnp.arange(max_width)[None, :], t - 1)  # [T, W] last token
  return start[..., :, None] + end[..., j] + csum[..., j + 1] - csum[..., i]


def span_loss(logits: Array, gold: Array, valid: Array) -> tuple[Array, dict]:
  """Binary cross-entropy over the valid spans of a batch, classes balanced.

  logits, gold, valid: [B, T, W]. A window has ~1000 candidate spans and a
  handful of mentions; a plain mean (ELQ's) is minimised early by calling
  every span negative, so the mean over the gold spans and the mean over the
  others count equally. Probabilities are then not calibrated, which the
  held-out threshold (train_linker.calibrate) absorbs. Returns (loss,
  metrics) with span-level precision/recall at logit 0 for the training log.
  """
  valid = valid.astype(jnp.float32)
  pos = gold.astype(jnp.float32) * valid
  neg = valid - pos
  logits = logits.astype(jnp.float32)
  softplus = lambda x: jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))
  loss = (0.5 * (pos * softplus(-logits)).sum() / jnp.maximum(pos.sum(), 1.0)
          + 0.5 * (neg * softplus(logits)).sum() / jnp.maximum(neg.sum(), 1.0))
  pred = (logits > 0) * valid
  tp = (pred * pos).sum()
  metrics = {"mention_loss": loss,
             "mention_precision": tp / jnp.maximum(pred.sum(), 1.0),
             "mention_recall": tp / jnp.maximum(pos.sum(), 1.0)}
  return loss, metrics


class MentionLinker(nnx.Module):
  """A bi-encoder's two towers plus a mention-detection head on the context tower.

  Calling it reads plain text windows ([CLS] text [SEP]) and returns span
  logits; `context_encoder` embeds mentions in BLINK's layout and
  `entity_encoder` embeds a catalogue (the linker keeps it frozen, so one
  checkpoint links against any catalogue it encodes).
  """

  def __init__(self, context_encoder: biencoder.Tower, entity_encoder: biencoder.Tower,
               *, max_width: int, rngs: nnx.Rngs):
    self.context_encoder = context_encoder
    self.entity_encoder = entity_encoder
    self.max_width = max_width
    self.mention_head = nnx.Linear(context_encoder.encoder.cfg.hidden_size, 3, rngs=rngs)

  def __call__(self, ids: Array, mask: Array) -> Array:
    """[B, T] window tokens -> [B, T, max_width] span logits."""
    seq = self.context_encoder.encoder(ids, mask).sequence
    return span_logits(self.mention_head(seq).astype(jnp.float32), self.max_width)


def build(config: ml_collections.ConfigDict, *, vocab_size: int,
          student: biencoder.BiEncoder | None = None,
          pretrained: bool = True) -> MentionLinker:
  """The linker of `config`: `student`'s towers (a fresh bi-encoder if None) + span head."""
  student = student or biencoder.build(config.model, vocab_size=vocab_size, seed=config.seed,
                                       pretrained=pretrained)
  return MentionLinker(student.context_encoder, student.entity_encoder,
                       max_width=config.linker.max_width,
                       rngs=bert.make_rngs(config.seed + 2))
