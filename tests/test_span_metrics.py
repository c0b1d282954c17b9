"""End-to-end span metrics on small documents whose counts are worked out by hand below."""

import json

import pytest

from blink_jax import span_metrics
from blink_jax.span_metrics import Counts, NilCounts, Span, merge, report, score_document

NIL = -1


def counts(scores, key):
  """(tp_pred, num_pred, tp_gold, num_gold) of one family/mode."""
  c = scores[key]
  return (c.tp_pred, c.num_pred, c.tp_gold, c.num_gold)


def test_exact_versus_overlap():
  gold = [(0, 5, 1), (10, 15, 2)]
  pred = [(0, 5, 1), (11, 15, 2)]  # The first is exact, the second only overlaps gold 2.
  s = score_document(gold, pred)
  # Strong: only (0, 5) matches on either side -> 1/2 predictions, 1/2 golds.
  assert counts(s, "mention_detection/strong") == (1, 2, 1, 2)
  assert counts(s, "linking/strong") == (1, 2, 1, 2)
  # Weak: (11, 15) overlaps (10, 15) with the same entity -> everything matches.
  assert counts(s, "mention_detection/weak") == (2, 2, 2, 2)
  assert counts(s, "linking/weak") == (2, 2, 2, 2)
  r = report(s)
  assert r["linking/strong/precision"] == r["linking/strong/recall"] == 0.5
  assert r["linking/strong/f1"] == 0.5
  assert r["linking/weak/f1"] == 1.0


def test_prediction_overlapping_two_golds_counts_once_per_side():
  gold = [(0, 4, 1), (5, 9, 2)]
  pred = [(2, 7, 1)]  # Overlaps both golds; its entity is the first gold's.
  s = score_document(gold, pred)
  # Detection, weak: the one prediction matches (1/1) and both golds are touched (2/2).
  assert counts(s, "mention_detection/weak") == (1, 1, 2, 2)
  assert counts(s, "mention_detection/strong") == (0, 1, 0, 2)
  # Linking, weak: the prediction is right about gold 1 (1/1); gold 2 has entity 2, which
  # nothing predicts (1/2). P = 1, R = 1/2, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
  assert counts(s, "linking/weak") == (1, 1, 1, 2)
  r = report(s)
  assert (r["linking/weak/precision"], r["linking/weak/recall"]) == (1.0, 0.5)
  assert r["linking/weak/f1"] == pytest.approx(2 / 3)


def test_two_predictions_on_one_gold_cannot_recall_it_twice():
  gold = [(0, 10, 3)]
  pred = [(0, 4, 3), (5, 10, 3)]
  # Both predictions are correct (2/2) but there is one gold to recall (1/1): recall <= 1.
  assert counts(score_document(gold, pred), "linking/weak") == (2, 2, 1, 1)


def test_wrong_entity_on_right_span():
  s = score_document([(0, 5, 1)], [(0, 5, 2)])
  # The span is found (1/1 both sides) but the entity is wrong (0/1 both sides).
  assert counts(s, "mention_detection/strong") == (1, 1, 1, 1)
  assert counts(s, "linking/strong") == (0, 1, 0, 1)
  r = report(s)
  assert r["linking/strong/f1"] == 0.0  # P + R = 0.
  assert r["mention_detection/strong/f1"] == 1.0


def test_nil_predictions_detect_but_do_not_link():
  gold = [(0, 5, 1), (6, 9, 2)]
  for nil_pred in [Span(0, 5, nil=True), (0, 5, NIL),
                   {"start": 0, "end": 5, "entity_id": 7, "nil": True}]:
    s = score_document(gold, [nil_pred, {"start": 6, "end": 9, "label_id": 2}])
    # Both predictions are detections (2/2, 2/2); only (6, 9) is linked: 1/1 precision,
    # 1/2 recall (gold entity 1 is never linked).
    assert counts(s, "mention_detection/strong") == (2, 2, 2, 2)
    assert counts(s, "linking/strong") == (1, 1, 1, 2)
    assert s["nil/strong"] == NilCounts()  # No NIL golds here.


def test_nil_golds():
  gold = [(0, 5, NIL), (6, 9, NIL), (10, 14, NIL), (20, 25, 4)]
  pred = [Span(0, 5, nil=True), (7, 9, 3), (20, 25, 4)]
  s = score_document(gold, pred)
  # Detection, strong: (0,5) and (20,25) match exactly; (7,9) != (6,9). 2/3 and 2/4.
  assert counts(s, "mention_detection/strong") == (2, 3, 2, 4)
  # Detection, weak: (7,9) overlaps (6,9) too; (10,14) stays unfound. 3/3 and 3/4.
  assert counts(s, "mention_detection/weak") == (3, 3, 3, 4)
  # Linking: predictions are the non-NIL (7,9,3) and (20,25,4); the only linkable gold is
  # (20,25,4). (7,9,3) lies on a NIL gold, so it is wrong in both modes: 1/2 and 1/1.
  assert counts(s, "linking/strong") == (1, 2, 1, 1)
  assert counts(s, "linking/weak") == (1, 2, 1, 1)
  # NIL golds, strong: (0,5) predicted NIL; (6,9) and (10,14) have no exact prediction.
  assert s["nil/strong"] == NilCounts(gold=3, linked=0, predicted_nil=1, missed=2)
  # Weak: (6,9) is now overlapped by the linked (7,9,3): a false link.
  assert s["nil/weak"] == NilCounts(gold=3, linked=1, predicted_nil=1, missed=1)


def test_nil_gold_touched_by_a_nil_and_a_link_counts_as_linked():
  s = score_document([(0, 10, NIL)], [Span(0, 4, nil=True), (5, 10, 3)])
  assert s["nil/weak"] == NilCounts(gold=1, linked=1, predicted_nil=0, missed=0)
  assert s["nil/strong"] == NilCounts(gold=1, linked=0, predicted_nil=0, missed=1)


@pytest.mark.parametrize("gold,pred", [([], []), ([(0, 3, 1)], []), ([], [(0, 3, 1)])])
def test_empty_sides_never_divide_by_zero(gold, pred):
  r = report(score_document(gold, pred))
  for key, value in r.items():
    if key.endswith(("/precision", "/recall", "/f1")):
      assert value == 0.0, key  # 0/0 and 0/n both read 0; the counts tell them apart.
  assert r["linking/strong/num_gold"] == len(gold)
  assert r["linking/strong/num_pred"] == len(pred)


def test_report_keys_are_flat_and_json_ready():
  r = report(score_document([(0, 5, NIL)], [(0, 5, 2)]))
  assert set(r) == {f"{fam}/{mode}/{k}"
                    for fam in span_metrics.FAMILIES for mode in span_metrics.MODES
                    for k in ("precision", "recall", "f1", "tp_pred", "num_pred", "tp_gold",
                              "num_gold")} | {
                        f"nil/{mode}/{k}" for mode in span_metrics.MODES
                        for k in ("gold", "linked", "predicted_nil", "missed")}
  assert json.loads(json.dumps(r)) == r
  assert r["nil/strong/linked"] == 1


def test_accumulation_equals_one_merged_document():
  doc_a = ([(0, 5, 1), (10, 15, 2), (20, 24, NIL)], [(0, 5, 1), (11, 15, 3), (20, 24, NIL)])
  doc_b = ([(0, 4, 1), (5, 9, 2)], [(2, 7, 1), Span(30, 33, nil=True)])
  doc_c = ([], [])
  shift = lambda spans, d: [Span(s.start + d, s.end + d, s.entity_id, s.nil)
                            for s in map(span_metrics.as_span, spans)]
  merged = score_document(doc_a[0] + shift(doc_b[0], 1000), doc_a[1] + shift(doc_b[1], 1000))
  totals = {}
  for gold, pred in (doc_a, doc_b, doc_c):
    totals = merge(totals, score_document(gold, pred))
  assert totals == merged
  assert span_metrics.score_documents([doc_a, doc_b, doc_c]) == merged
  assert report(totals) == report(merged)
  # Micro, not macro: the sums of the raw counts.
  assert totals["linking/weak"] == (score_document(*doc_a)["linking/weak"]
                                    + score_document(*doc_b)["linking/weak"])


def test_counts_add_and_bad_spans():
  assert Counts(1, 2, 3, 4) + Counts(1, 1, 1, 1) == Counts(2, 3, 4, 5)
  with pytest.raises(ValueError, match="empty"):
    score_document([(5, 5, 1)], [])
  with pytest.raises(ValueError):
    score_document([], [(-1, 3, 1)])


def test_string_entity_ids_compare_as_given():
  # A catalogue of string ids (and one integer that reads like a string id).
  gold = [{"start": 0, "end": 5, "label_id": "Q90"}, {"start": 6, "end": 8, "label_id": 42},
          {"start": 9, "end": 12, "label_id": NIL}]
  pred = [{"start": 0, "end": 5, "entity_id": "Q90", "nil": False},
          {"start": 6, "end": 8, "entity_id": "42", "nil": False},  # "42" is not 42.
          {"start": 9, "end": 12, "entity_id": "Q1", "nil": True}]
  s = score_document(gold, pred)
  assert counts(s, "linking/strong") == (1, 2, 1, 2)
  assert s["nil/strong"] == NilCounts(gold=1, linked=0, predicted_nil=1, missed=0)
