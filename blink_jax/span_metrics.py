"""End-to-end linking metrics over character spans, in the style of ELQ (Li et al., 2020).

Each document has gold spans and predicted spans, `(start, end, entity_id)` in character
offsets with `end` exclusive; entity ids are the catalogue's (integers or strings, compared
as given: 42 and "42" differ). A gold span with entity_id == NIL_ID (-1) is a NIL gold: a
mention whose entity is not in the catalogue. A predicted span is NIL (the linker found a
mention but no entity above its threshold) when it carries nil=True or entity_id == NIL_ID.

Matching. Strong: same (start, end). Weak: the two spans share at least one character
(start_a < end_b and start_b < end_a), ELQ's weak matching.

Families, each scored strong and weak, summed over documents (micro):

* mention_detection: spans only, entities ignored. Every predicted span (NIL or not) is a
  detection, every gold span (NIL or not) is a mention to find.
* linking: predictions are the non-NIL predicted spans, golds the non-NIL gold spans; a pair
  matches when the spans match and the entity ids are equal.

Precision and recall are counted on each side separately, so that neither can pass 1:
tp_pred is the number of predictions with at least one matching gold (over num_pred), tp_gold
the number of golds with at least one matching prediction (over num_gold). One prediction
overlapping two golds is one true positive for precision and two for recall; two predictions
on one gold are two for precision and one for recall. (ELQ's code uses a single count of
correct predictions for both, which lets weak recall exceed 1.) A ratio with a zero
denominator is reported as 0.0, and F1 is 0.0 when P + R = 0; the raw counts are reported
beside every figure, so 0/0 can be told apart from a real zero.

nil (strong and weak): each NIL gold span is exactly one of "linked" (some matching
prediction links it to an entity, a false link), "predicted_nil" (otherwise, some matching
prediction is NIL), or "missed" (no matching prediction).

Usage: `totals = merge(totals, score_document(gold, pred))` per document, then
`report(totals)` gives flat keys such as "linking/weak/f1", ready for metrics.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import numpy as np

NIL_ID = -1  # entity_id of a NIL gold span (as jsonl.NIL_ID).

FAMILIES = ("mention_detection", "linking")
MODES = ("strong", "weak")


@dataclasses.dataclass(frozen=True)
class Span:
  """A character span [start, end) and its entity; nil marks a predicted NIL mention."""

  start: int
  end: int
  entity_id: int | str = NIL_ID
  nil: bool = False


# A span as callers hold it: a Span, (start, end, entity_id[, nil]), or a dict with "start",
# "end", "entity_id" (or "label_id") and optionally "nil", as a linker's jsonl output has.
SpanLike = Union[Span, Sequence[Any], Mapping[str, Any]]


@dataclasses.dataclass
class Counts:
  """Hits on the prediction side and on the gold side of one family and mode."""

  tp_pred: int = 0
  num_pred: int = 0
  tp_gold: int = 0
  num_gold: int = 0

  def __add__(self, other: Counts) -> Counts:
    return Counts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  @property
  def precision(self) -> float:
    return self.tp_pred / self.num_pred if self.num_pred else 0.0

  @property
  def recall(self) -> float:
    return self.tp_gold / self.num_gold if self.num_gold else 0.0

  @property
  def f1(self) -> float:
    p, r = self.precision, self.recall
    return 2 * p * r / (p + r) if p + r else 0.0


@dataclasses.dataclass
class NilCounts:
  """What became of the NIL gold spans: gold == linked + predicted_nil + missed."""

  gold: int = 0
  linked: int = 0
  predicted_nil: int = 0
  missed: int = 0

  def __add__(self, other: NilCounts) -> NilCounts:
    return NilCounts(*(a + b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))


Scores = dict[str, Union[Counts, NilCounts]]


def as_span(x: SpanLike) -> Span:
  """`x` as a Span, checking 0 <= start < end."""
  if isinstance(x, Span):
    span = x
  elif isinstance(x, Mapping):
    entity_id = x.get("entity_id", x.get("label_id", NIL_ID))
    if entity_id is None:
      entity_id = NIL_ID
    span = Span(int(x["start"]), int(x["end"]),
                entity_id if isinstance(entity_id, str) else int(entity_id),
                bool(x.get("nil", False)))
  else:
    span = Span(*x)
  if not 0 <= span.start < span.end:
    raise ValueError(f"span [{span.start}, {span.end}) is empty or negative: {x!r}")
  return span


def _arrays(spans: list[Span]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  starts = np.array([s.start for s in spans], np.int64)
  ends = np.array([s.end for s in spans], np.int64)
  # Object ids: a catalogue's ids may be strings; == on them compares as Python does.
  ids = np.empty(len(spans), object)
  ids[:] = [s.entity_id for s in spans]
  return starts, ends, ids


def score_document(gold: Iterable[SpanLike], pred: Iterable[SpanLike]) -> Scores:
  """Counts of one document under every family and mode (see the module docstring).

  Returns {"mention_detection/strong": Counts, ..., "linking/weak": Counts,
  "nil/strong": NilCounts, "nil/weak": NilCounts}.
  """
  gold = [as_span(s) for s in gold]
  pred = [as_span(s) for s in pred]
  gs, ge, gid = _arrays(gold)
  ps, pe, pid = _arrays(pred)
  pred_nil = np.array([s.nil or s.entity_id == NIL_ID for s in pred], bool)
  gold_nil = gid == NIL_ID
  # [num_pred, num_gold] span matches; every count below is an any() over one axis, which
  # gives the "at least one match" rule of the docstring (and works with 0 rows or columns).
  match = {
      "strong": (ps[:, None] == gs[None, :]) & (pe[:, None] == ge[None, :]),
      "weak": (ps[:, None] < ge[None, :]) & (gs[None, :] < pe[:, None]),
  }
  same_entity = (pid[:, None] == gid[None, :]) & ~pred_nil[:, None] & ~gold_nil[None, :]
  out: Scores = {}
  for mode, m in match.items():
    out[f"mention_detection/{mode}"] = Counts(
        tp_pred=int(m.any(axis=1).sum()), num_pred=len(pred),
        tp_gold=int(m.any(axis=0).sum()), num_gold=len(gold))
    linked = m & same_entity
    out[f"linking/{mode}"] = Counts(
        tp_pred=int(linked.any(axis=1).sum()), num_pred=int((~pred_nil).sum()),
        tp_gold=int(linked.any(axis=0).sum()), num_gold=int((~gold_nil).sum()))
    on_nil = m[:, gold_nil]
    by_link = on_nil[~pred_nil].any(axis=0)
    by_nil = on_nil[pred_nil].any(axis=0) & ~by_link
    n = int(gold_nil.sum())
    out[f"nil/{mode}"] = NilCounts(gold=n, linked=int(by_link.sum()),
                                   predicted_nil=int(by_nil.sum()),
                                   missed=n - int(by_link.sum()) - int(by_nil.sum()))
  return out


def merge(a: Mapping[str, Counts | NilCounts],
          b: Mapping[str, Counts | NilCounts]) -> Scores:
  """The sum of two score dicts (e.g. a running total and one document); {} is the zero."""
  out: Scores = dict(a)
  for key, value in b.items():
    out[key] = out[key] + value if key in out else value
  return out


def score_documents(docs: Iterable[tuple[Iterable[SpanLike], Iterable[SpanLike]]]) -> Scores:
  """Micro totals over a stream of (gold, pred) documents; constant memory."""
  totals: Scores = {}
  for gold, pred in docs:
    totals = merge(totals, score_document(gold, pred))
  return totals


def report(scores: Mapping[str, Counts | NilCounts]) -> dict[str, float | int]:
  """Flat metrics: "<family>/<mode>/{precision,recall,f1,tp_pred,num_pred,tp_gold,num_gold}"
  and "nil/<mode>/{gold,linked,predicted_nil,missed}"."""
  out: dict[str, float | int] = {}
  for key in sorted(scores):
    value = scores[key]
    if isinstance(value, Counts):
      out.update({f"{key}/precision": value.precision, f"{key}/recall": value.recall,
                  f"{key}/f1": value.f1})
    out.update({f"{key}/{k}": v for k, v in dataclasses.asdict(value).items()})
  return out
