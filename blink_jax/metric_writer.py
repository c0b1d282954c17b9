"""The one metrics writer: WORKDIR/metrics.json, a JSONL history, TensorBoard.

Only process 0 writes; every other process gets a writer that does nothing,
so callers never branch on the process index. metrics.json is replaced
atomically, so a reader (or a killed run) never sees half a file. A gs://
workdir works the same (see storage.py); there TensorBoard writes its event
files to a local directory, and each flush uploads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Mapping

import jax

from blink_jax import config_utils
from blink_jax import storage


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
  """Writes JSON so that a reader sees the old file or the new one (storage.atomic_write)."""
  storage.atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


class MetricWriter:
  """Writes scalars (TensorBoard + metrics.jsonl) and final results (metrics.json)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb = None
    self._tag_names: dict[str, str] = {}  # TensorBoard tag -> the name it shows.
    # tensorboardX cannot write to gs://: its event files are written here and uploaded.
    self._tb_local = None
    if self.active:
      storage.makedirs(workdir)

  def _board(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      directory = os.path.join(self.workdir, "tensorboard")
      if storage.is_remote(directory):
        self._tb_local = tempfile.mkdtemp(prefix="blink_jax.tensorboard.")
        directory = self._tb_local
      self._tb = SummaryWriter(directory)
    return self._tb

  def _flush_board(self) -> None:
    self._tb.flush()
    if self._tb_local:  # Each event file is uploaded whole: one atomic object write.
      for name in os.listdir(self._tb_local):
        storage.upload_file(os.path.join(self._tb_local, name),
                            os.path.join(self.workdir, "tensorboard", name))

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
    self._flush_board()
    storage.append(os.path.join(self.workdir, "metrics.jsonl"),
                   (json.dumps(_jsonable({"step": step, **flat})) + "\n").encode("utf-8"))

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
    current = storage.read_json(path) if storage.exists(path) else {}
    current[section] = values
    atomic_write_json(path, current)
    self.scalars(step, {section: values})

  def close(self) -> None:
    if self._tb is not None:
      self._flush_board()
      self._tb.close()
    if self._tb_local:
      shutil.rmtree(self._tb_local, ignore_errors=True)
