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

With `linker.calibration_objective` = "linking/weak/f1" (or
"linking/strong/f1") both thresholds are then chosen again, for end-to-end
linking F1 on the same documents: the spans decoded at each mention threshold
at or above the mention-F1 one are linked (once, in every mode), and the
mention threshold and each mode's NIL threshold are the pair that links the
held-out documents best (the mention threshold is shared: the best by the
modes' mean). Mention F1 rewards every span found; linking F1 also pays for
spans linked wrong, which a higher threshold, or NIL, can drop.

With `linker.link_alpha_grid` (e.g. (1, 2, 4, 8, 16, 32)) the linking
objective also tries one joint cut per mode, as ELQ scores a linked span by
mention and entity together: a detected span is linked when
logit + alpha * log(confidence) >= threshold. A span the detector is sure of
may then be linked at a lower confidence, and a doubtful span needs a
confident link. Measured on the OKE-2016 fold it adds little to the
confidence alone (+.003 / -.010 weak linking F1, BENCHMARKS.md), so it is
off unless the grid is set. The choice per mode is stored as
`link_rule[mode] = {"alpha", "threshold"}`; the confidence threshold of the
gold-span calibration stays in `nil_threshold`, for spans given by the caller
(`Linker.disambiguate`), which have no logit.
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


def threshold_grid(span_logits: np.ndarray) -> np.ndarray:
  """The mention thresholds tried: 0 and 60 quantiles of the span logits (80-99.99%)."""
  return np.unique(np.concatenate([[0.0], np.quantile(span_logits,
                                                      np.linspace(0.8, 0.9999, 60))]))


def calibrate(linker: linker_lib.Linker, docs: list[Document], modes) -> dict:
  """Mention and NIL thresholds from held-out documents (see the module docstring)."""
  lc = linker.config.linker
  texts = [d.text for d in docs]
  windows = documents.make_windows(linker.tok, texts, max_len=lc.max_len,
                                   max_width=lc.max_width)
  logits = linker.span_logits(windows)
  grid = threshold_grid(logits[windows.valid])
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
  objective = lc.get("calibration_objective", MENTION_F1)
  if objective != MENTION_F1 and modes:
    out.update(linking_thresholds(linker, docs, windows, logits, grid, out, modes, objective))
  return out


MENTION_F1 = "mention_detection/strong/f1"
LINKING_F1 = ("linking/weak/f1", "linking/strong/f1")


def linking_thresholds(linker: linker_lib.Linker, docs: list[Document], windows, logits,
                       grid: np.ndarray, found: dict, modes, objective: str) -> dict:
  """Mention and NIL thresholds with the best end-to-end `objective` (module docstring).

  `found` is the mention-F1 calibration: its threshold is the lowest tried
  and its width bonus is kept. Returns the keys of `calibrate`'s result to
  replace, and what they replaced.
  """
  if objective not in LINKING_F1:
    raise ValueError(f"linker.calibration_objective must be {MENTION_F1!r} or one of "
                     f"{LINKING_F1}, got {objective!r}.")
  weak = objective == "linking/weak/f1"
  bonus = found["width_bonus"]
  thresholds = [float(t) for t in grid if t >= found["mention_threshold"]]
  decoded = [documents.decode_spans(windows, logits, t, len(docs), bonus) for t in thresholds]
  # Every span any threshold keeps, linked once per mode.
  union = sorted({(i, s, e) for pred in decoded for i, p in enumerate(pred) for s, e, _ in p})
  row = {span: r for r, span in enumerate(union)}
  max_len = linker.config.data.max_context_len
  mentions = [linker_lib.mention_of(docs[i].text, s, e, max_len) for i, s, e in union]
  worlds = [docs[i].world for i, _, _ in union]
  worlds = None if set(worlds) <= {None} else worlds
  golds = [gold_spans(d) for d in docs]
  # None: the confidence alone (a NIL threshold); a number: the joint cut.
  alphas = [None] + sorted(float(a) for a in linker.config.linker.get("link_alpha_grid", ()))
  logit_of = np.zeros(len(union), np.float64)
  for pred in decoded:
    for i, p in enumerate(pred):
      for s, e, logit in p:
        logit_of[row[(i, s, e)]] = logit
  best_by_mode = {}
  for mode in modes:
    ids, scores = linker.scored(mentions, worlds, mode)
    top = ids[:, 0] if len(ids) else np.zeros(0, np.int64)
    conf = linker_lib.confidence(scores) if len(ids) else np.zeros(0, np.float32)
    per_threshold = []
    for pred in decoded:
      spans = [[(s, e, row[(i, s, e)]) for s, e, _ in p] for i, p in enumerate(pred)]
      # The first best wins ties: confidence alone, then the smallest alpha.
      tried = [(*best_nil_threshold(golds, spans, top,
                                         linker_lib.link_score(logit_of, conf, a), weak), a)
               for a in alphas]
      per_threshold.append(max(tried, key=lambda x: (x[0], -alphas.index(x[2]))))
    best_by_mode[mode] = per_threshold
  # Per mention threshold, the modes' mean of their best F1; the first best wins ties.
  means = [np.mean([best_by_mode[m][j][0] for m in modes]) for j in range(len(thresholds))]
  j = int(np.argmax(means))
  chosen = {m: best_by_mode[m][j] for m in modes}
  out = {"mention_threshold": thresholds[j],
         "mention_f1_threshold": found["mention_threshold"],
         "mention_f1_nil_threshold": dict(found["nil_threshold"]),
         "calibration_objective": objective,
         "heldout_linking_f1": {m: c[0] for m, c in chosen.items()},
         # A mode linked by the joint cut keeps the gold-span NIL threshold for given spans.
         "nil_threshold": {m: (c[1] if c[2] is None else found["nil_threshold"][m])
                           for m, c in chosen.items()},
         "link_rule": {m: {"alpha": c[2], "threshold": c[1]}
                       for m, c in chosen.items() if c[2] is not None}}
  logging.info("Calibration for %s: mention threshold %.3f (mention F1's %.3f), NIL "
               "thresholds %s, joint rules %s, held-out %s %s over %d linked spans.",
               objective, out["mention_threshold"], found["mention_threshold"],
               out["nil_threshold"], out["link_rule"], objective,
               out["heldout_linking_f1"], len(union))
  return out


def best_nil_threshold(golds: list[list[tuple[int, int, int]]],
                       spans: list[list[tuple[int, int, int]]], top: np.ndarray,
                       conf: np.ndarray, weak: bool) -> tuple[float, float]:
  """(best linking F1, its NIL threshold) of predicted spans over documents.

  golds: per document, (start, end, label), label -1 for a NIL gold; spans:
  per document, (start, end, row), `top[row]` the span's best entity and
  `conf[row]` its confidence. A span is linked when conf >= t and top >= 0
  (as `Linker._results` decides), and the counts are span_metrics' linking
  counts (a test checks them against it): tp_pred, the linked spans that match
  a gold of their entity; num_pred, the linked spans; tp_gold, the non-NIL
  golds such a span matches. Every t at once: a gold is found for every t up
  to the best confidence among its correct matching spans. The lowest t of
  the best F1 wins (-inf: never NIL).
  """
  linked_conf, correct_conf, gold_conf, num_gold = [], [], [], 0
  for g, p in zip(golds, spans):
    g = [x for x in g if x[2] >= 0]
    num_gold += len(g)
    for s, e, r in p:
      if top[r] < 0:
        continue
      linked_conf.append(conf[r])
      if any(_match(s, e, gs, ge, weak) and top[r] == gl for gs, ge, gl in g):
        correct_conf.append(conf[r])
    for gs, ge, gl in g:
      c = [conf[r] for s, e, r in p if top[r] == gl and _match(s, e, gs, ge, weak)]
      if c:
        gold_conf.append(max(c))
  cands = np.unique(np.concatenate([[-np.inf], linked_conf]))
  at_least = lambda v: len(v) - np.searchsorted(np.sort(np.asarray(v, np.float64)), cands,
                                                side="left")
  num_pred, tp_pred, tp_gold = at_least(linked_conf), at_least(correct_conf), at_least(gold_conf)
  p = np.where(num_pred > 0, tp_pred / np.maximum(num_pred, 1), 0.0)
  r = tp_gold / max(num_gold, 1)
  f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
  j = int(np.argmax(f1))
  return float(f1[j]), float(cands[j])


def _match(s: int, e: int, gs: int, ge: int, weak: bool) -> bool:
  """span_metrics' strong (same span) or weak (overlap) match."""
  return s < ge and gs < e if weak else (s, e) == (gs, ge)
