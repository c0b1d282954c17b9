"""Mention and NIL thresholds of a linker, from held-out documents.

Two thresholds, stored in WORKDIR/linker/calibration.json and overridable in
the config: the span logit above which a span is a mention (best strong
mention F1), and, per mode, the confidence (the best candidate's softmax
probability among the mode's candidates) below which a linked mention is NIL.
No NIL labels are needed for the latter: each held-out mention is scored once
with its gold entity in the catalogue (a correct link should pass) and once
without it (the best remaining candidate should not); the threshold
maximises the expected accuracy of that decision when a share
`linker.nil_prior` of mentions is outside the catalogue.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from blink_jax import span_metrics
from blink_jax.data import documents
from blink_jax.data.jsonl import Document
from blink_jax.inference import linker as linker_lib


def gold_mentions(docs: list[Document], max_len: int):
  """Each in-catalogue gold span as a BLINK mention, with its document's world."""
  ms, worlds = [], []
  for d in docs:
    for s in d.spans:
      if s.label_id is not None and s.label_id >= 0:
        ms.append(dataclasses.replace(linker_lib.mention_of(d.text, s.start, s.end, max_len),
                                      label_id=s.label_id, world=d.world))
        worlds.append(d.world)
  return ms, (None if set(worlds) <= {None} else worlds)


def gold_spans(doc: Document) -> list[tuple[int, int, int]]:
  return [(s.start, s.end, s.label_id if s.label_id is not None else -1) for s in doc.spans]


def nil_threshold(s_in: np.ndarray, correct: np.ndarray, s_out: np.ndarray,
                  nil_prior: float) -> float:
  """The confidence threshold that best keeps correct links and rejects gold-less ones.

  s_in: [N] confidence with the gold entity in the catalogue, correct: [N]
  whether the best candidate was the gold one, s_out: [N] confidence without
  it. Maximises the expected accuracy of the NIL decision when a share
  `nil_prior` of mentions has no entity in the catalogue:
  (1 - nil_prior) * P(correct link kept) + nil_prior * P(gold-less rejected).
  """
  cands = np.unique(np.concatenate([s_in, s_out, [-np.inf]]))
  acc = [(1 - nil_prior) * (correct & (s_in >= t)).mean() + nil_prior * (s_out < t).mean()
         for t in cands]
  return float(cands[int(np.argmax(acc))])


def calibrate(linker: linker_lib.Linker, docs: list[Document], modes) -> dict:
  """Mention and NIL thresholds from held-out documents (see the module docstring)."""
  lc = linker.config.linker
  texts = [d.text for d in docs]
  windows = documents.make_windows(linker.tok, texts, max_len=lc.max_len,
                                   max_width=lc.max_width)
  logits = linker.span_logits(windows)
  vals = logits[windows.valid]
  grid = np.unique(np.concatenate([[0.0], np.quantile(vals, np.linspace(0.8, 0.9999, 60))]))
  # The threshold and the decoder's width bonus that find the held-out spans
  # best (strong F1); ties go to the smaller bonus, then the lower threshold.
  best = (-1.0, 0.0, 0.0)
  for bonus in sorted(float(b) for b in lc.get("width_bonus_grid", (0.0,))):
    for t in grid:
      pred = documents.decode_spans(windows, logits, float(t), len(docs), bonus)
      scores = span_metrics.score_documents(
          ([(s, e, -1) for s, e, _ in gold_spans(d)], [(s, e, -1) for s, e, _ in p])
          for d, p in zip(docs, pred))
      f1 = scores["mention_detection/strong"].f1
      if f1 > best[0]:
        best = (f1, float(t), bonus)
  out = {"mention_threshold": best[1], "width_bonus": best[2], "heldout_mention_f1": best[0],
         "heldout_documents": len(docs), "nil_threshold": {}}
  linker.width_bonus = best[2]  # NIL calibration below reads gold spans, not these.
  ms, worlds = gold_mentions(docs, linker.config.data.max_context_len)
  out["heldout_mentions"] = len(ms)
  if not ms:
    return out
  gold = np.array([m.label_id for m in ms])
  for mode in modes:
    ids, scores = linker.scored(ms, worlds, mode)
    first_is_gold = ids[:, 0] == gold
    # The same list with the gold entity taken out: a mention whose entity is
    # not in the catalogue.
    without = np.where(ids == gold[:, None], -np.inf, scores)
    without = np.take_along_axis(without, np.argsort(-without, 1, kind="stable"), 1)
    prior = float(linker.config.linker.nil_prior)
    t = nil_threshold(linker_lib.confidence(scores), first_is_gold,
                      linker_lib.confidence(without), prior)
    if not np.isfinite(t):
      # Not a failure: at this prior, rejecting any confident link costs more
      # correct links than it saves gold-less ones (seen in full mode, whose
      # re-ranked short lists are confident with or without the gold).
      logging.info("Calibration (%s mode): no confidence threshold beats never answering "
                   "NIL at nil_prior=%.2f on %d held-out mentions; NIL is off in this mode "
                   "(set linker.nil_threshold.%s to force one).", mode, prior, len(ms), mode)
    out["nil_threshold"][mode] = t
  return out
