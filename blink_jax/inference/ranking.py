"""Ranked candidates, and the fusion of several rankings into one.

`Candidates` is what every retriever returns (dense, lexical, hybrid) and what
the stages store. `rrf` is reciprocal-rank fusion (Cormack et al. 2009): an
entity's fused score is sum_i w_i / (c + rank_i), over the rankings that hold
it (rank from 1). It needs no score calibration between a dot product and
BM25, and an entity that only one retriever finds keeps its place.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

RRF_C = 60  # The constant of the original paper; it damps the top ranks' weight.


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Ranked candidate entities of N mentions.

  ids: [N, K] entity ids, best first; -1 pads lists shorter than K (a
    world with fewer entities).
  scores: [N, K] float32 scores (-inf on padding).
  labels: [N] gold entity ids (-1: NIL).
  """

  ids: np.ndarray
  scores: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def top(self, k: int) -> "Candidates":
    if k > self.ids.shape[1]:
      raise ValueError(f"{k} candidates asked for, {self.ids.shape[1]} stored: "
                       "raise config.candidates.k.")
    return Candidates(self.ids[:, :k], self.scores[:, :k], self.labels)

  def gold_positions(self) -> np.ndarray:
    """[N] column of each mention's gold entity, -1 where it was not retrieved."""
    hit = (self.ids == self.labels[:, None]) & (self.labels[:, None] >= 0)
    return np.where(hit.any(1), hit.argmax(1), -1)


def log_softmax(scores: np.ndarray) -> np.ndarray:
  """Row-wise log softmax of [N, K] scores; -inf (padding) stays -inf."""
  scores = np.asarray(scores, np.float64)
  top = np.max(np.where(np.isfinite(scores), scores, -np.inf), axis=1, keepdims=True)
  top = np.where(np.isfinite(top), top, 0.0)
  z = np.exp(scores - top).sum(1, keepdims=True)
  return scores - top - np.log(np.where(z > 0, z, 1.0))


def product(cross: np.ndarray, bi: np.ndarray, bi_weight: float) -> np.ndarray:
  """log p_cross + bi_weight * log p_bi over each row's K candidates.

  The two models' candidate distributions multiplied (a product of experts):
  the cross-encoder re-orders, the bi-encoder's confidence tempers it where the
  cross-encoder saw too little training. 0 gives the cross-encoder alone.
  Both [N, K] over the same candidates; -inf marks padding in either.
  """
  out = log_softmax(cross)
  if bi_weight:
    out = out + bi_weight * log_softmax(bi)
  return out.astype(np.float32)


def rrf(rankings: Sequence[np.ndarray], labels: np.ndarray, k: int, *,
        weights: Sequence[float] | None = None, c: float = RRF_C) -> Candidates:
  """The top k of the reciprocal-rank fusion of `rankings` (entity ids [N, K_i], -1 pads).

  Deterministic under ties: equal fused scores go to the entity with the better
  best rank in any ranking, then to the lower id. A ranking that holds nothing
  for a mention leaves the others' order as it was.
  """
  weights = [1.0] * len(rankings) if weights is None else list(weights)
  if len(weights) != len(rankings):
    raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings.")
  n = len(labels)
  rows, ids, contrib, rank = [], [], [], []
  for r, w in zip(rankings, weights):
    r = np.asarray(r, np.int64)
    if r.shape[0] != n:
      raise ValueError(f"A ranking of {r.shape[0]} rows for {n} mentions.")
    if w <= 0:
      continue
    row, col = np.nonzero(r >= 0)
    rows.append(row)
    ids.append(r[row, col])
    contrib.append(w / (c + col + 1.0))
    rank.append(col)
  out_ids = np.full((n, k), -1, np.int64)
  out_scores = np.full((n, k), -np.inf, np.float32)
  if rows and sum(len(x) for x in rows):
    row, ent = np.concatenate(rows), np.concatenate(ids)
    contrib, rank = np.concatenate(contrib), np.concatenate(rank)
    # One entry per (mention, entity): summed contributions, best rank.
    pairs, inverse = np.unique(np.stack([row, ent], 1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    score = np.bincount(inverse, weights=contrib, minlength=len(pairs))
    best = np.full(len(pairs), np.iinfo(np.int64).max)
    np.minimum.at(best, inverse, rank)
    # Fused scores are sums of a few exact reciprocals: round away float noise so
    # equal sums compare equal whatever the order they were added in.
    score = np.round(score, 12)
    order = np.lexsort((pairs[:, 1], best, -score, pairs[:, 0]))
    prow = pairs[order, 0]
    first = np.searchsorted(prow, np.arange(n))
    col = np.arange(len(order)) - first[prow]
    keep = col < k
    out_ids[prow[keep], col[keep]] = pairs[order, 1][keep]
    out_scores[prow[keep], col[keep]] = score[order][keep]
  return Candidates(ids=out_ids, scores=out_scores, labels=np.asarray(labels, np.int64))
