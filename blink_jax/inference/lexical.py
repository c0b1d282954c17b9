"""Lexical candidates: BM25 over each entity's title + description, and name matches.

    lex = lexical.Lexical(entities, window=100)
    cands = lex.retrieve(mentions, k)      # Candidates, as dense retrieval returns

Two views of a mention, each a BM25 ranking within the mention's world:
  * "text": the mention (repeated, so the context does not drown it) plus
    `window` characters of context each side, against title + description;
  * "names": the mention alone against titles alone, so "Dylan" finds
    "Bob Dylan" and "University of Utrecht" finds "Utrecht University"
    (exact and partial name matches, scored by how rare the shared words are).
`Lexical.retrieve` fuses them (`ranking.rrf`); `rankings` gives each alone.
"""

from __future__ import annotations

import collections
from typing import Callable

import numpy as np

from blink_jax import bm25
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import ranking

ALL = "all"  # The group name of records without a world.

# The mention is repeated in the query: its words are what a title must match
# (KORE50, R@1/R@64 against the 13,929 wikiel entities: context alone
# 0.15/0.80, mention alone 0.17/0.96, mention x3 + context 0.30/0.96).
MENTION_REPEAT = 3
# Characters of context each side. A whole document drowns the mention: on the
# demo's synthetic worlds (~450 characters of context) R@1 is 0.514 with all of
# it, 0.728 with 100 each side; on the short wikiel sets 100 matches the whole
# context (BENCHMARKS.md).
DEFAULT_WINDOW = 100


def groups(worlds: np.ndarray) -> dict[str, np.ndarray]:
  """Row indices per world; records without a world form the group ALL."""
  rows = collections.defaultdict(list)
  for i, w in enumerate(worlds):
    rows[w if w is not None else ALL].append(i)
  return {w: np.asarray(r, np.int64) for w, r in sorted(rows.items())}


def rank_per_world(rank: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
                   entities: Records[Entity], mentions: Records[Mention],
                   k: int) -> np.ndarray:
  """Ranks each mention against its own world's entities; returns entity ids.

  `rank(query_rows, entity_rows, k)` returns, per query row, positions into
  entity_rows, best first. Worlds are those of the records (None = one KB).
  Rows are padded with -1 where a world has fewer than k entities.
  """
  entity_ids = entities.labels
  by_world = groups(entities.worlds)
  ranked = np.full((len(mentions), k), -1, np.int64)
  for world, m_rows in groups(mentions.worlds).items():
    e_rows = by_world.get(world)
    if e_rows is None:
      raise ValueError(f"Mentions of world {world!r} but no entity of it.")
    top = rank(m_rows, e_rows, k)
    ranked[m_rows, :top.shape[1]] = np.where(top >= 0, entity_ids[e_rows][top], -1)
  return ranked


def text_query(m: Mention, window: int = DEFAULT_WINDOW) -> str:
  """The mention, repeated, and `window` characters of context each side (< 0: all of it)."""
  if window < 0:
    left, right = m.context_left, m.context_right
  else:
    left = m.context_left[-window:] if window > 0 else ""
    right = m.context_right[:window] if window > 0 else ""
  return f"{(m.mention + ' ') * MENTION_REPEAT}{left} {m.mention} {right}"


class Lexical:
  """BM25 indexes of a catalogue: its texts (title + description) and its titles."""

  def __init__(self, entities: Records[Entity], *, window: int = DEFAULT_WINDOW):
    self.entities = entities
    self.window = window
    es = list(entities)
    self._text = bm25.BM25Index.build([f"{e.title} {e.text}" for e in es])
    self._names = bm25.BM25Index.build([e.title for e in es])

  def _ranking(self, index: bm25.BM25Index, queries: list[str],
               mentions: Records[Mention], k: int) -> np.ndarray:
    def rank(m_rows, e_rows, k):
      cands = None if len(e_rows) == index.num_docs else e_rows
      scores, idx = index.search([queries[i] for i in m_rows], k, candidates=cands)
      # Rows that share no word with a query score 0: not a match, not a candidate.
      idx = np.where(scores > 0, idx, -1)
      pos = np.full(index.num_docs, -1, np.int64)  # global row -> position in e_rows
      pos[e_rows] = np.arange(len(e_rows))
      return np.where(idx >= 0, pos[np.maximum(idx, 0)], -1)
    return rank_per_world(rank, self.entities, mentions, k)

  def rankings(self, mentions: Records[Mention], k: int) -> dict[str, np.ndarray]:
    """{"text": ids [N, k], "names": ids [N, k]}, -1 past the last match."""
    ms = list(mentions)
    return {"text": self._ranking(self._text, [text_query(m, self.window) for m in ms],
                                  mentions, k),
            "names": self._ranking(self._names, [m.mention for m in ms], mentions, k)}

  def retrieve(self, mentions: Records[Mention], k: int) -> ranking.Candidates:
    """Each mention's top k by the fused text and name rankings."""
    r = self.rankings(mentions, k)
    return ranking.rrf([r["text"], r["names"]], mentions.labels, k)
