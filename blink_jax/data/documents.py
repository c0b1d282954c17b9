"""Whole texts for mention detection: windows, candidate spans, gold labels, decoding.

A text is cut into word-piece windows of at most `max_len - 2` pieces
([CLS] window [SEP]); consecutive windows overlap by half, so every span
shorter than half a window lies whole inside at least one of them.

A candidate span (i, w) covers window tokens i..i+w (w < max_width). It must
start and end on word boundaries — i is not a "##" continuation piece, and the
piece after i+w (in the text, not only the window) is not one — so every
predicted span maps back to whole words of the original text. Gold spans are
matched to the tokens that overlap their characters; a gold span with no
candidate (wider than max_width pieces, or not on word boundaries) cannot be
found by the model and is counted by `Windows.unreachable`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from blink_jax import tokenization


@dataclasses.dataclass(frozen=True)
class Windows:
  """Model inputs of the windows of some texts, and what maps them back.

  tokens: [N, T] ids/mask with offsets into each window's own text.
  text_index: [N] which input text each window comes from.
  valid: [N, T, W] candidate spans.
  gold: [N, T, W] gold spans (all False without gold).
  unreachable: gold spans of the texts that are no candidate in any window.
  """

  tokens: tokenization.TokenBatch
  text_index: np.ndarray
  valid: np.ndarray
  gold: np.ndarray
  unreachable: int = 0

  def __len__(self) -> int:
    return len(self.text_index)

  def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The model inputs of some windows, as a batch dict."""
    return {"ids": self.tokens.ids[rows], "mask": self.tokens.mask[rows],
            "valid": self.valid[rows], "gold": self.gold[rows]}


def make_windows(tok: tokenization.Tokenizer, texts: Sequence[str], *, max_len: int,
                 max_width: int,
                 spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> Windows:
  """Windows of `texts`, with gold labels from `spans` (character (start, end) per text)."""
  if max_len < 4:
    raise ValueError(f"max_len={max_len} leaves no room for text.")
  body = max_len - 2
  stride = max(body // 2, 1)
  cont = tok.continuation
  rows, text_index, valids, golds = [], [], [], []
  unreachable = 0
  for t, (ids, offs) in enumerate(tok.pieces(texts)):
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    is_start = ~cont[ids] if n else np.zeros(0, bool)
    # A piece may end a span when the next piece starts a new word.
    is_end = np.append(is_start[1:], True) if n else np.zeros(0, bool)
    tok_spans = []
    if spans is not None:
      starts = np.array([o[0] for o in offs], np.int64)
      ends = np.array([o[1] for o in offs], np.int64)
      for s, e in spans[t]:
        over = np.flatnonzero((ends > s) & (starts < e))
        if len(over):
          tok_spans.append((int(over[0]), int(over[-1])))
        else:
          unreachable += 1
    found = set()
    for w0 in range(0, max(n - body, 0) + stride, stride):
      w1 = min(w0 + body, n)
      m = w1 - w0
      valid = np.zeros((max_len, max_width), bool)
      for w in range(max_width):
        if m - w <= 0:
          break
        v = is_start[w0:w1 - w] & is_end[w0 + w:w1]
        valid[1:1 + m - w, w] = v
      gold = np.zeros_like(valid)
      for k, (i, j) in enumerate(tok_spans):
        if w0 <= i and j < w1 and j - i < max_width and valid[1 + i - w0, j - i]:
          gold[1 + i - w0, j - i] = True
          found.add(k)
      rows.append(([tok.cls_id] + ids[w0:w1].tolist() + [tok.sep_id],
                   [(-1, -1)] + list(offs[w0:w1]) + [(-1, -1)]))
      text_index.append(t)
      valids.append(valid)
      golds.append(gold)
      if w1 == n:
        break
    unreachable += len(tok_spans) - len(found)
  tokens = tok.pack(rows, max_len)
  shape = (0, max_len, max_width)
  return Windows(tokens=tokens, text_index=np.asarray(text_index, np.int64),
                 valid=np.stack(valids) if valids else np.zeros(shape, bool),
                 gold=np.stack(golds) if golds else np.zeros(shape, bool),
                 unreachable=unreachable)


def candidate_spans(windows: Windows, logits: np.ndarray, threshold: float, num_texts: int
                    ) -> list[dict[tuple[int, int], tuple[float, int]]]:
  """Per text, {(start, end): (best logit, extra word pieces)} of the spans >= threshold,
  from every window (a span seen by two windows keeps its best logit)."""
  best: list[dict[tuple[int, int], tuple[float, int]]] = [{} for _ in range(num_texts)]
  ok = windows.valid & (logits >= threshold)
  for n, i, w in zip(*np.nonzero(ok)):
    s = int(windows.tokens.offsets[n, i, 0])
    e = int(windows.tokens.offsets[n, i + w, 1])
    d = best[windows.text_index[n]]
    d[(s, e)] = (max(d.get((s, e), (-np.inf, 0))[0], float(logits[n, i, w])), int(w))
  return best


def decode_spans(windows: Windows, logits: np.ndarray, threshold: float,
                 num_texts: int, width_bonus: float = 0.0
                 ) -> list[list[tuple[int, int, float]]]:
  """Predicted (start, end, logit) character spans of each text, non-overlapping.

  Spans with logit >= threshold are collected from every window (a span seen
  by two windows keeps its best logit), then kept greedily, best first: a
  span overlapping one already kept is dropped. "Best" is the logit plus
  `width_bonus` per extra word piece: with 0 the most confident span wins;
  a bonus prefers a whole name ("Marvin Minsky") over its parts ("Marvin",
  "Minsky") when all of them pass the threshold, which a model trained on
  partial names does (the calibration chooses it). Each text's spans come
  back sorted by start.
  """
  out = []
  for d in candidate_spans(windows, logits, threshold, num_texts):
    kept: list[tuple[int, int, float]] = []
    order = sorted(d.items(), key=lambda x: (-(x[1][0] + width_bonus * x[1][1]), x[0]))
    for (s, e), (score, _) in order:
      if all(e <= ks or s >= ke for ks, ke, _ in kept):
        kept.append((s, e, score))
    out.append(sorted(kept))
  return out
