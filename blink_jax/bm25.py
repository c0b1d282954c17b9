"""Okapi BM25 retrieval over entity texts: the lexical baseline and candidate source.

score(q, d) = sum over query tokens t (with repetition) of
    idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)),
with N documents, n(t) of them containing t, |d| the token count of d: Lucene's
variant, whose idf is never negative.

Scoring is `bm25s` (PyPI), a maintained sparse implementation; on the wikiel
catalogue it returns the same top 64 as the hand-written one it replaced, with
queries ~3x faster (BENCHMARKS.md). It leaves out the constant (k1 + 1), which
does not change a ranking; we put it back so scores are the formula's. This
module adds one tokenizer for index and queries, search within a subset of
the documents (one world), -1 padding and ties to the lower index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
# bm25s logs every index build at INFO.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def tokenize(text: str) -> list[str]:
  """Lowercased runs of unicode word characters; the one tokenizer of index and queries."""
  return _WORD.findall(text.lower())


class BM25Index:
  """A BM25 index over a fixed list of texts; rows are addressed by position in that list."""

  def __init__(self, retriever: "bm25s.BM25", num_docs: int, k1: float):
    # Prefer BM25Index.build.
    self._retriever = retriever
    self._num_docs = num_docs
    self._k1 = k1

  @property
  def num_docs(self) -> int:
    """How many texts the index holds."""
    return self._num_docs

  @classmethod
  def build(cls, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> BM25Index:
    """Indexes `texts` (for entities, pass title + " " + text) with Okapi parameters k1, b."""
    if k1 < 0 or not 0 <= b <= 1:
      raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    # Imported here, not at the top: importing bm25s runs a JAX computation,
    # which starts the XLA backend, after which jax.distributed.initialize()
    # refuses to run (every module main.py imports must leave JAX untouched).
    import bm25s  # pylint: disable=g-import-not-at-top
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", idf_method="lucene")
    if texts:
      retriever.index([tokenize(t) for t in texts], show_progress=False)
    return cls(retriever, len(texts), k1)

  def score(self, queries: Sequence[str], candidates: np.ndarray | None = None) -> np.ndarray:
    """Dense [Q, C] float32 BM25 scores against all documents, or against `candidates` only.

    With candidates, column j scores the j-th smallest candidate index.
    """
    pool = None if candidates is None else self._check_candidates(candidates)
    out = np.zeros((len(queries), self.num_docs if pool is None else len(pool)), np.float32)
    vocab = getattr(self._retriever, "vocab_dict", None) or {}
    for i, q in enumerate(queries):
      # Tokens the catalogue never uses score nothing (bm25s would reject them).
      ids = [vocab[t] for t in tokenize(q) if t in vocab]
      if ids:
        s = self._retriever.get_scores_from_ids(ids) * (self._k1 + 1.0)
        out[i] = s if pool is None else s[pool]
    return out

  def search(self, queries: Sequence[str], k: int, *,
             candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents per query: (scores [Q, k] float32, indices [Q, k] int64).

    Sorted by descending score, ties broken by the lower index. Indices are positions in the
    texts given to build, also when `candidates` (a 1-D array of such positions, e.g. one
    world's entities) restricts the search. When fewer than k documents are searchable the
    rows are padded with index -1 and score -inf. Note idf and avgdl always come from the whole
    index; build one index per world for per-world statistics.
    """
    if k < 1:
      raise ValueError(f"k must be >= 1, got {k}")
    pool = (np.arange(self.num_docs, dtype=np.int64) if candidates is None
            else self._check_candidates(candidates))
    take = min(k, len(pool))
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_idx = np.full((len(queries), k), -1, dtype=np.int64)
    if take == 0:
      return out_scores, out_idx
    scores = self.score(queries, None if candidates is None else pool)
    for i, s in enumerate(scores):
      # The top `take` by score, then a stable sort of them: equal scores keep ascending
      # pool order (the pool is sorted), so ties go to the lower index, also at the cut.
      cut = np.partition(-s, take - 1)[take - 1]
      top = np.flatnonzero(-s <= cut)
      top = top[np.argsort(-s[top], kind="stable")][:take]
      out_scores[i, :take] = s[top]
      out_idx[i, :take] = pool[top]
    return out_scores, out_idx

  def _check_candidates(self, candidates: np.ndarray) -> np.ndarray:
    """Candidates as a sorted int64 array; duplicates or out-of-range positions are errors."""
    cand = np.asarray(candidates)
    if cand.ndim != 1 or (cand.size and not np.issubdtype(cand.dtype, np.integer)):
      raise ValueError(f"candidates must be a 1-D integer array, got {cand.dtype} {cand.shape}")
    cand = np.sort(cand.astype(np.int64))
    if cand.size and (cand[0] < 0 or cand[-1] >= self.num_docs):
      raise ValueError(f"candidates must lie in [0, {self.num_docs}), got "
                       f"[{cand[0]}, {cand[-1]}]")
    if np.any(cand[1:] == cand[:-1]):
      raise ValueError("candidates contain duplicate indices")
    return cand
