"""The fields of a linked span and of its candidates, in one place.

`Linker.link` / `Linker.disambiguate` build their output here, the CLI writes
it as it is, and the HTTP server (`blink_jax/serve/schemas.py`) describes it
with the same names and the `EntityId` type below. An entity is named by
`entity_id` (the catalogue's id exactly as given: 42 or "Q42"), `title`,
`url` when the catalogue has one (`Linker.entity_fields`), and `score`.

  span:      {start, end, mention, entity_id, title[, url], score, nil[, candidates]}
  candidate: {entity_id, title[, url], score, bi_score[, cross_score]}

A span's `score` is its best candidate's probability (softmax over the
mode's candidates), and a candidate's `score` is that candidate's, so a
span's first candidate has the span's entity and score. `bi_score` is the
bi-encoder's dot product and `cross_score` the cross-encoder's logit (full
mode): the raw scores a downstream re-ranker wants.
"""

from __future__ import annotations

import math
from typing import Any

# The catalogue's entity ids (BLINK jsonl `"id"`): integers, or strings such as
# Wikidata QIDs, titles or URLs, returned with the type they were given.
EntityId = int | str


def entity(fields: dict[str, Any], score: float) -> dict:
  """{entity_id, title[, url], score}: how every output names an entity.

  `fields` are `Linker.entity_fields`' (the catalogue's id, title and url)."""
  out = {"entity_id": fields["entity_id"], "title": fields["title"]}
  if fields.get("url") is not None:
    out["url"] = fields["url"]
  out["score"] = float(score)
  return out


def span(mention: str, fields: dict[str, Any], score: float, nil: bool, *,
         start: int | None = None, end: int | None = None) -> dict:
  """A linked span; `start`/`end` (character offsets) when the linker found it in a text."""
  out = {} if start is None else {"start": int(start), "end": int(end)}
  out["mention"] = mention
  out.update(entity(fields, score))
  out["nil"] = bool(nil)
  return out


def candidate(fields: dict[str, Any], score: float, bi_score: float,
              cross_score: float | None = None) -> dict:
  """One of a span's top-k candidates; `bi_score` None where the bi-encoder did
  not retrieve it (a lexical-only candidate of hybrid retrieval)."""
  out = entity(fields, score)
  out["bi_score"] = None if math.isnan(bi_score) else float(bi_score)
  if cross_score is not None:
    out["cross_score"] = float(cross_score)
  return out
