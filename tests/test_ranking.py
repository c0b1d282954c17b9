"""Reciprocal-rank fusion against hand-computed scores, and the lexical retriever on a toy catalogue."""

import numpy as np
import pytest

from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import lexical
from blink_jax.inference import ranking

NONE = -1


def test_fused_scores_are_the_hand_computed_sums():
  a = np.array([[5, 7, NONE]])
  b = np.array([[7, 9, 3]])
  c = ranking.rrf([a, b], np.array([7]), 4)
  # 7: 1/62 + 1/61; 5: 1/61; 9: 1/62; 3: 1/63.
  np.testing.assert_array_equal(c.ids, [[7, 5, 9, 3]])
  np.testing.assert_allclose(c.scores, [[1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63]], rtol=1e-6)
  assert c.gold_positions().tolist() == [0]


def test_fusion_equals_each_component_when_the_other_returns_nothing():
  rng = np.random.default_rng(0)
  r = np.stack([rng.permutation(50)[:10] for _ in range(6)])
  r[2, 7:] = NONE  # A short list stays short.
  empty = np.full((6, 10), NONE)
  for rankings in ([r, empty], [empty, r]):
    np.testing.assert_array_equal(ranking.rrf(rankings, np.zeros(6), 10).ids, r)


def test_ties_are_broken_by_best_rank_then_id_whatever_the_input_order():
  a = np.array([[4, 2, 8]])
  b = np.array([[2, 4, 9]])
  # 4 and 2 tie (1/61 + 1/62 each) with the same best rank: the lower id first.
  # 8 and 9 tie at 1/63 each: again the lower id.
  for rankings in ([a, b], [b, a]):
    np.testing.assert_array_equal(ranking.rrf(rankings, np.zeros(1), 4).ids, [[2, 4, 8, 9]])


def test_weights_scale_a_ranking_and_zero_drops_it():
  a, b = np.array([[1, 2]]), np.array([[2, 3]])
  # 2 is in both; then 1 (3/61) before 3 (1/62), or 3 (3/62) before 1 (1/61).
  np.testing.assert_array_equal(ranking.rrf([a, b], np.zeros(1), 3, weights=[3, 1]).ids,
                                [[2, 1, 3]])
  np.testing.assert_array_equal(ranking.rrf([a, b], np.zeros(1), 3, weights=[1, 3]).ids,
                                [[2, 3, 1]])
  np.testing.assert_array_equal(ranking.rrf([a, b], np.zeros(1), 3, weights=[0, 1]).ids,
                                [[2, 3, NONE]])
  with pytest.raises(ValueError):
    ranking.rrf([a, b], np.zeros(1), 3, weights=[1])


def _catalogue():
  return Records.of([
      Entity(0, "Bob Dylan", "An American singer-songwriter."),
      Entity(1, "Utrecht University", "A public research university in Utrecht."),
      Entity(2, "Dylan Thomas", "A Welsh poet."),
      Entity(3, "Desire (Bob Dylan album)", "The 17th studio album, from 1976."),
  ])


def test_name_view_finds_partial_names_and_text_view_reads_the_context():
  lex = lexical.Lexical(_catalogue(), window=40)
  ms = Records.of([
      Mention("He studied at the ", "University of Utrecht", " in 1865.", 1),
      Mention("", "Dylan", " toured as a singer-songwriter.", 0),
  ])
  r = lex.rankings(ms, 4)
  assert r["names"][0, 0] == 1
  assert set(r["names"][1, :3]) == {0, 2, 3}  # Every title with "Dylan" is a name match.
  assert r["text"][1, 0] == 0  # The context ("singer-songwriter") picks Bob Dylan.
  # No shared word: no candidate, not a zero-score filler.
  none = lex.rankings(Records.of([Mention("", "zebra", "", -1)]), 4)
  assert (none["names"] == NONE).all() and (none["text"] == NONE).all()
  fused = lex.retrieve(ms, 4)
  assert fused.ids[0, 0] == 1 and fused.ids[1, 0] == 0


def test_query_window_cuts_the_context():
  m = Mention("a" * 10 + "LEFT", "X", "RIGHT" + "b" * 10, 0)
  q = lexical.text_query(m, window=4)
  assert "LEFT" in q and "RIGHT"[:4] in q and "a" not in q and "b" not in q
  assert lexical.text_query(m, window=0).split() == ["X", "X", "X", "X"]
  assert "a" * 10 in lexical.text_query(m, window=-1)  # All of the context.


def test_product_is_the_sum_of_log_softmaxes_by_hand():
  cross = np.array([[2.0, 0.0, -np.inf]], np.float32)
  bi = np.array([[0.0, np.log(3.0), -np.inf]], np.float32)
  # p_cross = (e^2, 1) / (e^2 + 1); p_bi = (1, 3) / 4.
  want = [np.log(np.e**2 / (np.e**2 + 1)) + 2 * np.log(1 / 4),
          np.log(1 / (np.e**2 + 1)) + 2 * np.log(3 / 4)]
  got = ranking.product(cross, bi, 2.0)
  np.testing.assert_allclose(got[0, :2], want, rtol=1e-6)
  assert got[0, 2] == -np.inf
  # The bi-encoder can overturn the cross-encoder's order: weight 2 here does.
  assert got[0, 1] > got[0, 0]
  # Weight 0 is the cross-encoder alone: its order, log-normalised.
  alone = ranking.product(cross, bi, 0.0)
  np.testing.assert_allclose(np.exp(alone[0, :2]).sum(), 1.0, rtol=1e-6)
  assert alone[0, 0] > alone[0, 1]
