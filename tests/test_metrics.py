"""recall_at_k and macro_micro against hand-counted expectations."""

import math

import numpy as np
import pytest

from blink_jax.metrics import macro_micro, recall_at_k

# Gold ranks by row: 1 (0-based) | 2 | absent | excluded (NIL) | 0.
RANKED = np.array([[3, 1, 2], [5, 6, 7], [9, 8, 0], [1, 2, 3], [4, 0, 0]])
GOLD = np.array([1, 7, 4, -1, 4])


def test_recall_at_k_hand_counted():
  out = recall_at_k(RANKED, GOLD, ks=(1, 2, 3, 10))
  # 4 evaluated rows; hits within k: k=1 -> row 4; k=2 -> rows 0, 4; k=3 -> rows 0, 1, 4.
  assert out == {"recall@1": 0.25, "recall@2": 0.5, "recall@3": 0.75, "recall@10": 0.75,
                 "count": 4}


def test_recall_ignores_padding_ids():
  ranked = np.array([[-1, -1], [2, -1]])
  assert recall_at_k(ranked, np.array([2, 2]), ks=(1,)) == {"recall@1": 0.5, "count": 2}


def test_recall_all_nil_is_nan_not_zero():
  out = recall_at_k(np.array([[1, 2]]), np.array([-1]), ks=(1,))
  assert out["count"] == 0 and math.isnan(out["recall@1"])


@pytest.mark.parametrize("ranked, gold, ks", [
    (np.zeros((3, 2)), np.zeros(2), (1,)),  # N mismatch.
    (np.zeros(3), np.zeros(3), (1,)),  # ranked not 2-D.
    (np.zeros((3, 2)), np.zeros(3), (0,)),  # k < 1.
    (np.zeros((3, 2)), np.zeros(3), ()),
])
def test_recall_rejects_bad_input(ranked, gold, ks):
  with pytest.raises(ValueError):
    recall_at_k(ranked, gold, ks)


def test_macro_micro_weights():
  per_world = {
      "a": {"recall@1": 0.5, "recall@64": 1.0, "count": 2},
      "b": {"recall@1": 1.0, "recall@64": 1.0, "count": 6},
      "empty": {"recall@1": math.nan, "recall@64": math.nan, "count": 0},
  }
  out = macro_micro(per_world)
  assert out["macro/recall@1"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
  assert out["micro/recall@1"] == pytest.approx(0.875)  # (0.5 * 2 + 1.0 * 6) / 8
  assert out["macro/recall@64"] == out["micro/recall@64"] == 1.0
  assert out["count"] == 8 and out["num_groups"] == 2


def test_macro_micro_end_to_end_with_recall():
  world_a = recall_at_k(RANKED, GOLD, ks=(1,))  # 1 of 4
  world_b = recall_at_k(np.array([[7, 1]]), np.array([7]), ks=(1,))  # 1 of 1
  out = macro_micro({"a": world_a, "b": world_b})
  assert out["macro/recall@1"] == pytest.approx((0.25 + 1.0) / 2)
  assert out["micro/recall@1"] == pytest.approx(2 / 5)


def test_macro_micro_rejects_mismatched_groups():
  with pytest.raises(ValueError, match="metrics"):
    macro_micro({"a": {"recall@1": 1.0, "count": 1}, "b": {"recall@10": 1.0, "count": 1}})
  with pytest.raises(ValueError, match="count"):
    macro_micro({"a": {"recall@1": 1.0}})
  with pytest.raises(ValueError):
    macro_micro({})
