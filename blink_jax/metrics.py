"""Retrieval metrics: recall@k over ranked candidate lists, and per-world macro/micro averages.

Zeshel reports results per test world and averages them; BLINK reports both the macro average
(each world counts once) and the micro average (each mention counts once). Mentions whose gold
entity is not in the catalogue (label -1, NIL) cannot be retrieved and are left out of recall;
the number of mentions actually evaluated is always reported beside the figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

NIL_ID = -1


def recall_at_k(ranked_ids: np.ndarray, gold: np.ndarray,
                ks: Sequence[int] = (1, 10, 64)) -> dict[str, float | int]:
  """Fraction of mentions whose gold id is among the first k ranked ids, for each k in ks.

  ranked_ids: [N, K] candidate ids, best first (padding such as -1 simply never matches).
  gold: [N] gold ids; rows with gold == -1 (NIL) are excluded.
  Returns {"recall@k": float, ..., "count": evaluated rows}. A k above K is computed at K (the
  key keeps the requested k). With no evaluated rows every recall is NaN, never a fake 0.
  """
  ranked_ids = np.asarray(ranked_ids)
  gold = np.asarray(gold)
  if ranked_ids.ndim != 2 or gold.ndim != 1 or ranked_ids.shape[0] != gold.shape[0]:
    raise ValueError(f"need ranked_ids [N, K] and gold [N], got {ranked_ids.shape} and "
                     f"{gold.shape}")
  if not ks or any(int(k) < 1 for k in ks):
    raise ValueError(f"ks must be non-empty positive integers, got {list(ks)}")
  keep = gold != NIL_ID
  ranked_ids, gold = ranked_ids[keep], gold[keep]
  n, width = ranked_ids.shape
  hits = ranked_ids == gold[:, None]
  # Rank of the first hit per row; `width` (one past the end) when gold is absent.
  first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), width)
  out: dict[str, float | int] = {}
  for k in ks:
    k = int(k)
    out[f"recall@{k}"] = float(np.mean(first_hit < min(k, width))) if n else math.nan
  out["count"] = int(n)
  return out


def macro_micro(per_group: Mapping[str, Mapping[str, float | int]]) -> dict[str, float | int]:
  """Averages per-group (per-world) results of recall_at_k.

  macro/<metric> is the plain mean over groups, micro/<metric> the mean weighted by each
  group's "count" (i.e. pooled over all mentions). Groups with count 0 have no figures and are
  left out of both. Returns the two families plus "count" (total) and "num_groups" (used).
  """
  if not per_group:
    raise ValueError("macro_micro needs at least one group")
  names = None
  for group, result in per_group.items():
    if "count" not in result:
      raise ValueError(f"group {group!r} has no 'count': {dict(result)}")
    metrics = sorted(k for k in result if k != "count")
    if names is None:
      names = metrics
    elif metrics != names:
      raise ValueError(f"group {group!r} has metrics {metrics}, others have {names}")
  used = {g: r for g, r in per_group.items() if r["count"] > 0}
  total = sum(int(r["count"]) for r in used.values())
  out: dict[str, float | int] = {}
  for name in names or []:
    if used:
      out[f"macro/{name}"] = float(np.mean([float(r[name]) for r in used.values()]))
      out[f"micro/{name}"] = float(sum(float(r[name]) * int(r["count"])
                                       for r in used.values()) / total)
    else:
      out[f"macro/{name}"] = out[f"micro/{name}"] = math.nan
  out["count"] = total
  out["num_groups"] = len(used)
  return out
