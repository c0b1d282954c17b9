"""BM25 against scores computed by hand from the Okapi formula on a toy corpus."""

import math

import numpy as np
import pytest

from blink_jax.bm25 import BM25Index, tokenize

# Lengths 3, 2, 5 tokens: avgdl = 10 / 3. "cat" is in docs 0 and 2, "dog" only in doc 1.
DOCS = ["The cat sat", "the DOG", "a cat and a cat"]
K1, B = 1.2, 0.75
AVGDL = 10 / 3


def idf(n_containing: int, n_docs: int = 3) -> float:
  return math.log(1 + (n_docs - n_containing + 0.5) / (n_containing + 0.5))


def term(tf: int, doc_len: int) -> float:
  return tf * (K1 + 1) / (tf + K1 * (1 - B + B * doc_len / AVGDL))


def test_tokenize_lowercases_unicode_words():
  assert tokenize("Héllo, WORLD_1 foo-bar  Ünïcode!") == ["héllo", "world_1", "foo", "bar",
                                                          "ünïcode"]
  assert tokenize("  ,.; ") == []


def test_scores_match_hand_computation():
  index = BM25Index.build(DOCS)
  # idf(cat) = ln(1 + 1.5 / 2.5) = ln 1.6; idf(dog) = ln(1 + 2.5 / 1.5) = ln(8/3).
  assert idf(2) == pytest.approx(math.log(1.6))
  assert idf(1) == pytest.approx(math.log(8 / 3))
  # doc0: tf=1, |d|=3 -> 2.2 / (1 + 1.2 * (0.25 + 0.75 * 0.9)) = 2.2 / 2.11.
  # doc1: tf(dog)=1, |d|=2 -> 2.2 / (1 + 1.2 * (0.25 + 0.75 * 0.6)) = 2.2 / 1.84.
  # doc2: tf=2, |d|=5 -> 4.4 / (2 + 1.2 * (0.25 + 0.75 * 1.5)) = 4.4 / 3.65.
  assert term(1, 3) == pytest.approx(2.2 / 2.11)
  assert term(1, 2) == pytest.approx(2.2 / 1.84)
  assert term(2, 5) == pytest.approx(4.4 / 3.65)
  expected = np.array([math.log(1.6) * 2.2 / 2.11,  # ~0.4902
                       math.log(8 / 3) * 2.2 / 1.84,  # ~1.1727
                       math.log(1.6) * 4.4 / 3.65])  # ~0.5666
  scores = index.score(["cat dog"])
  np.testing.assert_allclose(scores[0], expected, rtol=1e-5)

  top, idx = index.search(["cat dog"], k=3)
  np.testing.assert_array_equal(idx, [[1, 2, 0]])
  np.testing.assert_allclose(top[0], expected[[1, 2, 0]], rtol=1e-5)
  assert top.dtype == np.float32 and idx.dtype == np.int64


def test_repeated_query_terms_count_each_time():
  index = BM25Index.build(DOCS)
  np.testing.assert_allclose(index.score(["cat cat"]), 2 * index.score(["cat"]), rtol=1e-6)


def test_ties_go_to_lower_index_and_unknown_tokens_score_zero():
  index = BM25Index.build(["x y", "a b", "x y", "a b"])
  scores, idx = index.search(["x", "zzz"], k=4)
  np.testing.assert_array_equal(idx, [[0, 2, 1, 3], [0, 1, 2, 3]])
  assert scores[0, 0] == scores[0, 1] > 0 and scores[0, 2] == 0
  np.testing.assert_array_equal(scores[1], 0)


def test_candidates_restrict_and_pad():
  index = BM25Index.build(DOCS)
  scores, idx = index.search(["cat dog"], k=3, candidates=np.array([2, 0]))
  # Doc 1 (the best overall) is not a candidate; indices stay global; the third slot is padding.
  np.testing.assert_array_equal(idx, [[2, 0, -1]])
  assert scores[0, 2] == -np.inf
  np.testing.assert_allclose(scores[0, :2], [math.log(1.6) * 4.4 / 3.65,
                                             math.log(1.6) * 2.2 / 2.11], rtol=1e-5)
  # k beyond the whole index pads too.
  _, idx = index.search(["cat"], k=5)
  np.testing.assert_array_equal(idx, [[2, 0, 1, -1, -1]])


@pytest.mark.parametrize("candidates", [np.array([0, 0]), np.array([3]), np.array([-1]),
                                        np.array([[0, 1]]), np.array([0.5])])
def test_bad_candidates_raise(candidates):
  with pytest.raises(ValueError):
    BM25Index.build(DOCS).search(["cat"], k=1, candidates=candidates)


def test_search_equals_a_full_sort_of_the_scores():
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(30)]
  texts = [" ".join(rng.choice(words, size=8)) for _ in range(40)]
  queries = [" ".join(rng.choice(words, size=5)) for _ in range(7)]
  index = BM25Index.build(texts)
  scores, idx = index.search(queries, k=10)
  full = index.score(queries)
  order = np.argsort(-full, axis=1, kind="stable")[:, :10]
  np.testing.assert_array_equal(idx, order)
  np.testing.assert_array_equal(scores, np.take_along_axis(full, order, axis=1))
