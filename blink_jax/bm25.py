"""Okapi BM25 retrieval over entity texts: the lexical baseline and candidate source.

score(q, d) = sum over query tokens t (with repetition) of
    idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)),
with N documents, n(t) of them containing t, |d| the token count of d. The idf is the
non-negative variant (Lucene's), so a term in every document still counts a little.

The per-(document, term) weights are precomputed into one sparse matrix, so a batch of queries
is a single sparse product.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

_WORD = re.compile(r"\w+")
_QUERY_CHUNK = 512  # Rows scored at once; bounds the dense [chunk, num_docs] score block.


def tokenize(text: str) -> list[str]:
  """Lowercased runs of unicode word characters; the one tokenizer of index and queries."""
  return _WORD.findall(text.lower())


class BM25Index:
  """A BM25 index over a fixed list of texts; rows are addressed by position in that list."""

  def __init__(self, weights: sp.csr_matrix, vocab: dict[str, int], idf: np.ndarray,
               doc_len: np.ndarray, k1: float, b: float):
    # Prefer BM25Index.build; this constructor only stores what build computed.
    self.weights = weights  # [num_docs, vocab] float32: the BM25 term weight of t in d.
    self.vocab = vocab
    self.idf = idf
    self.doc_len = doc_len
    self.k1 = k1
    self.b = b

  @property
  def num_docs(self) -> int:
    """How many texts the index holds."""
    return self.weights.shape[0]

  @classmethod
  def build(cls, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> BM25Index:
    """Indexes `texts` (for entities, pass title + " " + text) with Okapi parameters k1, b."""
    if k1 < 0 or not 0 <= b <= 1:
      raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    vocab: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, text in enumerate(texts):
      for tok in tokenize(text):
        cols.append(vocab.setdefault(tok, len(vocab)))
        rows.append(i)
    n_docs = len(texts)
    # Duplicate (row, col) pairs are summed on conversion: that is the term frequency.
    tf = sp.csr_matrix((np.ones(len(rows), np.float64), (rows, cols)),
                       shape=(n_docs, len(vocab)))
    tf.sum_duplicates()
    doc_len = np.asarray(tf.sum(axis=1)).ravel()
    avgdl = float(doc_len.mean()) if n_docs else 0.0
    avgdl = avgdl if avgdl > 0 else 1.0  # Empty index or all-empty texts: no length effect.
    df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float64)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))

    # Row-wise length normalisation, expanded to one value per stored entry.
    norm = k1 * (1.0 - b + b * doc_len / avgdl)
    norm_per_entry = np.repeat(norm, np.diff(tf.indptr))
    data = idf[tf.indices] * tf.data * (k1 + 1.0) / (tf.data + norm_per_entry)
    weights = sp.csr_matrix((data.astype(np.float32), tf.indices.copy(), tf.indptr.copy()),
                            shape=tf.shape)
    return cls(weights, vocab, idf.astype(np.float32), doc_len.astype(np.int64), k1, b)

  def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
    """[Q, vocab] counts of the known tokens of each query (unknown tokens score nothing)."""
    rows: list[int] = []
    cols: list[int] = []
    for i, q in enumerate(queries):
      for tok in tokenize(q):
        j = self.vocab.get(tok)
        if j is not None:
          rows.append(i)
          cols.append(j)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(len(queries), len(self.vocab)))
    m.sum_duplicates()
    return m

  def score(self, queries: Sequence[str], candidates: np.ndarray | None = None) -> np.ndarray:
    """Dense [Q, C] float32 BM25 scores against all documents, or against `candidates` only.

    With candidates, column j scores the j-th smallest candidate index.
    """
    w = self.weights if candidates is None else self.weights[self._check_candidates(candidates)]
    return np.asarray((self.query_matrix(queries) @ w.T).todense(), dtype=np.float32)

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
    if candidates is None:
      pool = np.arange(self.num_docs, dtype=np.int64)
    else:
      pool = self._check_candidates(candidates)
    take = min(k, len(pool))
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_idx = np.full((len(queries), k), -1, dtype=np.int64)
    w_t = self.weights[pool].T.tocsr() if candidates is not None else self.weights.T.tocsr()
    for lo in range(0, len(queries), _QUERY_CHUNK):
      chunk = queries[lo:lo + _QUERY_CHUNK]
      scores = np.asarray((self.query_matrix(chunk) @ w_t).todense(), dtype=np.float32)
      # A stable sort of the negated scores keeps equal scores in ascending pool order, and
      # the pool is sorted, so ties go to the lower index.
      order = np.argsort(-scores, axis=1, kind="stable")[:, :take]
      rows = slice(lo, lo + len(chunk))
      out_scores[rows, :take] = np.take_along_axis(scores, order, axis=1)
      out_idx[rows, :take] = pool[order]
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
