"""bench/linking_errors.py: how it sorts spans, on a hand-made document."""

import collections
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "linking_errors", os.path.join(REPO, "bench", "linking_errors.py"))
linking_errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linking_errors)


def _span(text, word, nth=0):
  start = -1
  for _ in range(nth + 1):
    start = text.index(word, start + 1)
  return start, start + len(word)


def _pred(text, word, entity_id, title, nil=False, nth=0):
  start, end = _span(text, word, nth)
  return {"start": start, "end": end, "entity_id": entity_id, "title": title, "nil": nil}


def test_every_span_is_sorted_once_by_verdict_and_form():
  text = ("Elie Wiesel met him in Paris; the university in Bern sent him a letter in 1986 "
          "about Gegwe at New York City Hall.")
  nil = linking_errors.span_metrics.NIL_ID
  gold = [(*_span(text, "Elie Wiesel"), 1),   # found as "Wiesel": right
          (*_span(text, "him"), 1),           # exact, wrong entity
          (*_span(text, "Paris"), 2),         # detected, NIL
          (*_span(text, "Bern"), 3),          # not detected
          (*_span(text, "him", 1), 1),        # exact, right
          (*_span(text, "1986"), nil),        # outside the catalogue, left NIL
          (*_span(text, "Gegwe"), nil),       # outside the catalogue, linked
          (*_span(text, "New York"), 4),      # inside a span linked to the next one's entity
          (*_span(text, "City Hall"), 5)]     # right, with that span
  pred = [_pred(text, "Wiesel", 1, "Elie Wiesel"),
          _pred(text, "him", 7, "Max Born"),
          _pred(text, "Paris", 2, "Paris", nil=True),
          _pred(text, "university", 9, "University"),     # spurious, named as its entity
          _pred(text, "letter", 8, "Letter (alphabet)"),  # spurious
          _pred(text, "him", 1, "Elie Wiesel", nth=1),
          _pred(text, "1986", 11, "1986 FIFA World Cup", nil=True),
          _pred(text, "Gegwe", 12, "Gegwe River"),
          _pred(text, "New York City Hall", 5, "City Hall")]
  counts = collections.Counter()
  linking_errors.sort_spans(text, gold, pred, counts)
  assert counts == collections.Counter({
      "linked/overlap_right": 2, "linked/capitalised/overlap_right": 2,
      "linked/exact_wrong": 2, "linked/pronoun/exact_wrong": 1,
      "linked/capitalised/exact_wrong": 1,
      "linked/exact_right": 1, "linked/pronoun/exact_right": 1,
      "nil/exact_right": 1, "nil/capitalised/exact_right": 1,
      "nil/exact_wrong": 1, "nil/other/exact_wrong": 1,
      "linked/spurious": 2, "linked/lower_case/spurious": 2, "linked/spurious_title_match": 1,
      "gold/right": 3, "gold/capitalised/right": 2, "gold/pronoun/right": 1,
      "gold/wrong": 1, "gold/pronoun/wrong": 1,
      "gold/merged": 1, "gold/capitalised/merged": 1,
      "gold/nil": 1, "gold/capitalised/nil": 1,
      "gold/undetected": 1, "gold/capitalised/undetected": 1,
      "nil_gold/nil": 1, "nil_gold/linked": 1})


def test_string_ids_and_nil_gold_do_not_mix():
  # A catalogue keyed by strings: NIL gold stays NIL_ID and is never compared by order.
  text = "Ada met Bob."
  gold = [(0, 3, "Q7259"), (8, 11, linking_errors.span_metrics.NIL_ID)]
  pred = [{"start": 0, "end": 3, "entity_id": "Q7259", "title": "Ada Lovelace", "nil": False}]
  counts = collections.Counter()
  linking_errors.sort_spans(text, gold, pred, counts)
  assert counts == collections.Counter({
      "linked/exact_right": 1, "linked/capitalised/exact_right": 1,
      "gold/right": 1, "gold/capitalised/right": 1, "nil_gold/undetected": 1})
