"""The one metrics writer: WORKDIR/metrics.json, a JSONL history, TensorBoard.

Only process 0 writes; every other process gets a writer that does nothing,
so callers never branch on the process index. metrics.json is replaced
atomically, so a reader (or a killed run) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Mapping

import jax

from blink_jax import config_utils


def _scalars(tree: Mapping[str, Any]) -> dict[str, float]:
  """The numbers of a nested dict, by "/"-joined name (booleans and text dropped)."""
  return {name: float(v) for name, v in config_utils.flatten(tree, sep="/").items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


_LEGAL_TAG = re.compile(r"[A-Za-z0-9_.\-][A-Za-z0-9_./\-]*")
_ILLEGAL_RUN = re.compile(r"[^A-Za-z0-9_./\-]+")


def tensorboard_tag(name: str) -> str:
  """`name` with only the characters TensorBoard allows in a tag, [A-Za-z0-9_./-].

  tensorboardX would otherwise log "Summary name ... is illegal" and turn each
  bad character into "_", so "a b" and "a+b" land in one series. Legal names
  pass unchanged; "@" and "+" keep their meaning ("recall@1" -> "recall_at_1",
  "bi-encoder + cross-encoder" -> "bi-encoder_plus_cross-encoder").
  """
  if _LEGAL_TAG.fullmatch(name):
    return name
  tag = re.sub(r"\s*@\s*", "_at_", name)
  tag = re.sub(r"\s*\+\s*", "_plus_", tag)
  return _ILLEGAL_RUN.sub("_", tag).lstrip("/") or "_"


def _jsonable(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None  # JSON has no NaN; null keeps the file standard.
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "item"):
    return _jsonable(x.item())
  return x


def atomic_write_json(path: str, obj: Any) -> None:
  """Writes JSON to a temp file beside `path`, then renames it into place."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


class MetricWriter:
  """Writes scalars (TensorBoard + metrics.jsonl) and final results (metrics.json)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb = None
    self._tag_names: dict[str, str] = {}  # TensorBoard tag -> the name it shows.
    if self.active:
      os.makedirs(workdir, exist_ok=True)

  def _board(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
    return self._tb

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """Logs a (nested) dict of scalars at `step`."""
    if not self.active:
      return
    flat = _scalars(values)
    board = self._board()
    for name, v in flat.items():
      # TensorBoard has no use for an infinite scalar (a "never NIL" threshold
      # of -inf) and warns on each; metrics.jsonl keeps it, as null.
      if math.isfinite(v):
        board.add_scalar(self._tag(name), v, step)
    board.flush()
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(_jsonable({"step": step, **flat})) + "\n")

  def _tag(self, name: str) -> str:
    # Two names that sanitize alike ("a b", "a_b") must not share a series:
    # the later one gets a suffix fixed by its own name.
    tag = tensorboard_tag(name)
    if self._tag_names.setdefault(tag, name) != name:
      tag = f"{tag}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return tag

  def results(self, section: str, values: Mapping[str, Any], step: int = 0) -> None:
    """Stores `values` under `section` in metrics.json and logs its scalars."""
    if not self.active:
      return
    path = os.path.join(self.workdir, "metrics.json")
    current = {}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        current = json.load(f)
    current[section] = values
    atomic_write_json(path, current)
    self.scalars(step, {section: values})

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
