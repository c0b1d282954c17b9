"""bench/linking_errors.py: how it sorts spans, on a hand-made document."""

import collections
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "linking_errors", os.path.join(REPO, "bench", "linking_errors.py"))
linking_errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linking_errors)


def _pred(text, word, entity_id, title, nil=False, nth=0):
  start = -1
  for _ in range(nth + 1):
    start = text.index(word, start + 1)
  return {"start": start, "end": start + len(word), "entity_id": entity_id, "title": title,
          "nil": nil}


def test_every_span_is_sorted_once_by_verdict_and_form():
  text = "Elie Wiesel met him in Paris; the university in Bern sent him a letter."
  at = lambda w, nth=0: text.index(w) if nth == 0 else text.index(w, text.index(w) + 1)
  gold = [(at("Elie Wiesel"), at("Elie Wiesel") + 11, 1),   # found as "Wiesel", right
          (at("him"), at("him") + 3, 1),                     # exact, wrong entity
          (at("Paris"), at("Paris") + 5, 2),                 # detected, NIL
          (at("Bern"), at("Bern") + 4, 3),                   # not detected
          (at("him", 1), at("him", 1) + 3, 1)]               # exact, right
  pred = [_pred(text, "Wiesel", 1, "Elie Wiesel"),
          _pred(text, "him", 7, "Max Born"),
          _pred(text, "Paris", 2, "Paris", nil=True),
          _pred(text, "university", 9, "University"),        # spurious, named as its entity
          _pred(text, "letter", 8, "Letter (alphabet)"),     # spurious
          _pred(text, "him", 1, "Elie Wiesel", nth=1)]
  counts = collections.Counter()
  linking_errors.sort_spans(text, gold, pred, counts)
  assert counts == collections.Counter({
      "linked/overlap_right": 1, "linked/capitalised/overlap_right": 1,
      "linked/exact_wrong": 1, "linked/pronoun/exact_wrong": 1,
      "linked/exact_right": 1, "linked/pronoun/exact_right": 1,
      "nil/exact_right": 1, "nil/capitalised/exact_right": 1,
      "linked/spurious": 2, "linked/lower_case/spurious": 2, "linked/spurious_title_match": 1,
      "gold/right": 2, "gold/capitalised/right": 1, "gold/pronoun/right": 1,
      "gold/wrong": 1, "gold/pronoun/wrong": 1,
      "gold/nil": 1, "gold/capitalised/nil": 1,
      "gold/undetected": 1, "gold/capitalised/undetected": 1,
      "gold/in_catalogue": 5})
