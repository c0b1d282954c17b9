"""Bi-encoder losses: softmax over the global batch of entities.

Every mention is scored against every entity embedded in the step: the gold
entities of all mentions of the global batch (in-batch negatives, across all
devices and hosts) and every mention's mined hard negatives. An entity that
equals a mention's gold but sits elsewhere in the batch (the same entity
drawn twice) is masked out: it is neither the positive nor a negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_MASKED = -1e9  # Finite: exp() underflows to 0 and gradients stay finite.


def in_batch_loss(q: Array, e: Array, q_labels: Array, e_labels: Array,
                  pos_cols: Array) -> tuple[Array, dict[str, Array]]:
  """Softmax cross-entropy of each mention against all entities of the batch.

  Args:
    q: [B, d] mention embeddings.
    e: [M, d] entity embeddings (golds and hard negatives of all mentions).
    q_labels: [B] gold entity id of each mention.
    e_labels: [M] entity id of each entity row; -1 marks padding rows.
    pos_cols: [B] column of each mention's own gold row in `e`.

  Returns:
    (mean loss, metrics) with in-batch accuracy and the mean positive score.
  """
  logits = jnp.einsum("bd,md->bm", q, e, preferred_element_type=jnp.float32)
  cols = jnp.arange(e.shape[0])
  is_pos = cols[None, :] == pos_cols[:, None]
  repeat = (e_labels[None, :] == q_labels[:, None]) & ~is_pos
  padding = (e_labels < 0)[None, :]
  logits = jnp.where(repeat | padding, _MASKED, logits)
  pos = jnp.take_along_axis(logits, pos_cols[:, None], axis=1)[:, 0]
  loss = jax.nn.logsumexp(logits, axis=1) - pos
  metrics = {
      "loss": loss.mean(),
      "accuracy": (jnp.argmax(logits, axis=1) == pos_cols).mean(),
      "positive_score": pos.mean(),
  }
  return loss.mean(), metrics
