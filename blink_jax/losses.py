"""Losses: the bi-encoder's in-batch softmax, softmax over candidates, distillation.

`in_batch_loss`: every mention is scored against every entity embedded in the step: the gold
entities of all mentions of the global batch (in-batch negatives, across all
devices and hosts) and every mention's mined hard negatives. An entity that
equals a mention's gold but sits elsewhere in the batch (the same entity
drawn twice) is masked out: it is neither the positive nor a negative.

`candidate_loss` (cross-encoder) and `distillation_loss` (bi-encoder student)
score each mention against its own k retrieved candidates; candidates past
the end of a short list (`valid` false) are masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_MASKED = -1e9  # Finite: exp() underflows to 0 and gradients stay finite.


HARD_NEGATIVE_LOSSES = ("softmax", "binary")


def in_batch_loss(q: Array, e: Array, q_labels: Array, e_labels: Array,
                  pos_cols: Array, *, group: int = 1, hard_negative_loss: str = "softmax"
                  ) -> tuple[Array, dict[str, Array]]:
  """Softmax cross-entropy of each mention against all entities of the batch.

  Args:
    q: [B, d] mention embeddings.
    e: [M, d] entity embeddings (golds and hard negatives of all mentions).
    q_labels: [B] gold entity id of each mention.
    e_labels: [M] entity id of each entity row; -1 marks padding rows.
    pos_cols: [B] column of each mention's own gold row in `e`; its hard negatives
      follow it (`group` rows in all: the gold and group - 1 negatives).
    hard_negative_loss: "softmax": the hard negatives are more columns of every
      mention's softmax. "binary" (BLINK's separate loss): the softmax is over the
      batch's golds only, and each mention's own gold and hard negatives add a
      sigmoid cross-entropy (label 1 for the gold, 0 for each negative), averaged
      over those pairs.

  Returns:
    (mean loss, metrics) with in-batch accuracy and the mean positive score.
  """
  if hard_negative_loss not in HARD_NEGATIVE_LOSSES:
    raise ValueError(f"hard_negative_loss must be one of {HARD_NEGATIVE_LOSSES}, "
                     f"got {hard_negative_loss!r}.")
  raw = jnp.einsum("bd,md->bm", q, e, preferred_element_type=jnp.float32)
  cols = jnp.arange(e.shape[0])
  is_pos = cols[None, :] == pos_cols[:, None]
  repeat = (e_labels[None, :] == q_labels[:, None]) & ~is_pos
  padding = (e_labels < 0)[None, :]
  drop = repeat | padding
  binary = hard_negative_loss == "binary" and group > 1
  if binary:
    drop = drop | (cols % group != 0)[None, :]  # Hard negatives leave the softmax.
  logits = jnp.where(drop, _MASKED, raw)
  pos = jnp.take_along_axis(logits, pos_cols[:, None], axis=1)[:, 0]
  loss = jax.nn.logsumexp(logits, axis=1) - pos
  metrics = {
      "loss": loss.mean(),
      "accuracy": (jnp.argmax(logits, axis=1) == pos_cols).mean(),
      "positive_score": pos.mean(),
  }
  loss = loss.mean()
  if binary:
    own = pos_cols[:, None] + jnp.arange(group)[None, :]  # [B, group]
    scores = jnp.take_along_axis(raw, own, axis=1)
    valid = ~jnp.take_along_axis(repeat | padding, own, axis=1)
    targets = (jnp.arange(group) == 0)[None, :].astype(jnp.float32)
    bce = _sigmoid_bce(scores, targets)
    bce = jnp.where(valid, bce, 0.0).sum() / jnp.maximum(valid.sum(), 1)
    metrics["binary_loss"] = bce
    loss = loss + bce
  return loss, metrics


def _sigmoid_bce(logits: Array, labels: Array) -> Array:
  """Elementwise sigmoid cross-entropy, stable for large |logits| (as torch's
  BCEWithLogitsLoss): max(x, 0) - x * y + log(1 + exp(-|x|))."""
  return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def _masked(scores: Array, valid: Array) -> Array:
  return jnp.where(valid, scores.astype(jnp.float32), _MASKED)


def candidate_loss(scores: Array, gold: Array, valid: Array
                   ) -> tuple[Array, dict[str, Array]]:
  """Softmax cross-entropy over each mention's candidates (BLINK's cross-encoder).

  Args:
    scores: [B, K] a score per candidate.
    gold: [B, K] 1 at the gold candidate (every mention has one: mentions
      whose gold was not retrieved are not trained on).
    valid: [B, K] false where the candidate list is padding.
  """
  logits = _masked(scores, valid)
  pos = (logits * gold).sum(-1)
  loss = jax.nn.logsumexp(logits, axis=-1) - pos
  metrics = {"accuracy": (jnp.argmax(logits, -1) == jnp.argmax(gold, -1)).mean(),
             "positive_score": pos.mean()}
  return loss.mean(), metrics


def distillation_loss(student: Array, teacher: Array, gold: Array, valid: Array, *,
                      alpha: float, temperature: float
                      ) -> tuple[Array, dict[str, Array]]:
  """alpha * CE(gold) + (1 - alpha) * tau^2 * KL(teacher/tau || student/tau).

  Over each mention's candidates ([B, K] arrays as in `candidate_loss`);
  the teacher's scores are fixed inputs. tau^2 keeps the soft term's gradient
  on the scale of the hard one's as tau grows (Hinton et al. 2015).
  """
  ce, metrics = candidate_loss(student, gold, valid)
  t = temperature
  log_p_teacher = jax.nn.log_softmax(_masked(teacher, valid) / t, axis=-1)
  log_p_student = jax.nn.log_softmax(_masked(student, valid) / t, axis=-1)
  # Padding columns: p_teacher = 0 exactly and both logs finite, so 0 * x = 0.
  kl = (jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(-1).mean()
  loss = alpha * ce + (1.0 - alpha) * t * t * kl
  agree = jnp.argmax(_masked(student, valid), -1) == jnp.argmax(_masked(teacher, valid), -1)
  return loss, {**metrics, "cross_entropy": ce, "kl": kl,
                "teacher_agreement": agree.mean()}
