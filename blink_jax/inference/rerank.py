"""Cross-encoder re-ranking of stored candidate lists."""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from blink_jax.data import pipeline
from blink_jax.inference import encode
from blink_jax.inference.ranking import Candidates
from blink_jax.models import crossencoder


def score_candidates(model: crossencoder.CrossEncoder, builder: pipeline.PairBuilder,
                     *, batch_size: int, mesh: Mesh | None = None,
                     desc: str = "re-ranking") -> np.ndarray:
  """Cross-encoder scores [N, K] of every mention with each of its candidates.

  Pair rows stream through `encode.encode`: split over devices and
  processes, each process tokenizing only its own. -inf where a candidate
  list is padding. `model` may be a function made by `encode.tower_fn`.
  """
  n, k = builder.candidate_ids.shape

  def tokenize(rows):
    return builder.pairs(rows // k, rows % k)[0]

  flat = encode.encode(model, tokenize, n * k, batch_size=batch_size, mesh=mesh,
                       desc=desc, inputs=("ids", "mask", "segment_ids"))
  scores = flat.reshape(n, k).astype(np.float32)
  return np.where(builder.candidate_ids >= 0, scores, -np.inf)


def rerank(cands: Candidates, scores: np.ndarray) -> np.ndarray:
  """Entity ids re-ordered by `scores` [N, K], then the rest of the stored list.

  The first K ids are the re-ranked candidates (padding last); ids beyond K
  keep the bi-encoder's order, so recall@k past K is the retriever's.
  """
  k = scores.shape[1]
  order = np.argsort(-scores, axis=1, kind="stable")
  head = np.take_along_axis(cands.ids[:, :k], order, axis=1)
  return np.concatenate([head, cands.ids[:, k:]], axis=1)
