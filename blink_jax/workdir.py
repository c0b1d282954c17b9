"""The workdir: where every stage's artifacts live, and what each was made from.

    WORKDIR/
      data/                          the synthetic worlds (data.kind=synthetic)
      biencoder/  config.json, checkpoints/<step>/      stage "biencoder"
      candidates/<set>/              stage "candidates": each mention's top k
      crossencoder/ config.json, checkpoints/<step>/    stage "crossencoder"
      distill/    config.json, checkpoints/<step>/, teacher/<set>/
      linker/     config.json, checkpoints/<step>/, index/, calibration.json
      index/                         stage "index" (--config.mode=index)
      metrics.json, metrics.jsonl, tensorboard/

Every artifact has an *identity*: {"stage", "step", "fingerprint"}, the
fingerprint a digest of the config fields that made it **and of the
identities of the upstream artifacts it consumed**. A consumer compares the
identity an artifact records with what it would consume now: derived data
(candidates, teacher scores, an index) is recomputed when they differ; a
trained checkpoint is refused with a message naming what changed. So an
upstream retrain is never silently built upon.

Each trained stage stores the config it ran with in `<stage>/config.json`;
a later stage rebuilds its upstream models from those files, so it needs only
its own flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from blink_jax import config_utils
from blink_jax import storage
from blink_jax.metric_writer import atomic_write_json


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage of the chain: its directory, and the stages whose artifacts it reads."""

  name: str
  reads: tuple[str, ...]
  writes: str
  what: str


# The chain, in the order `mode=pipeline` runs it. "final" is the bi-encoder
# a user gets: the distilled student when there is one, else the bi-encoder.
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("biencoder", (), "biencoder/checkpoints",
          "bi-encoder: in-batch + hard negatives"),
    Stage("candidates", ("biencoder",), "candidates/<set>/",
          "each mention's top candidates.k by the bi-encoder"),
    Stage("crossencoder", ("candidates",), "crossencoder/checkpoints",
          "cross-encoder re-ranker over the candidates"),
    Stage("distill", ("biencoder", "candidates", "crossencoder"),
          "distill/checkpoints, distill/teacher/<set>/",
          "the bi-encoder distilled from the cross-encoder"),
    Stage("linker", ("final", "crossencoder"), "linker/checkpoints, linker/index",
          "mention detection + linking on the final bi-encoder; calibration"),
    Stage("index", ("final",), "index/", "the final bi-encoder's index of a catalogue"),
)}

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"


class StaleArtifactError(RuntimeError):
  """A stage's artifact was made from an upstream artifact that has changed since."""


def stage_dir(workdir: str, stage: str) -> str:
  """WORKDIR/<stage>: the one place a stage writes."""
  return os.path.join(workdir, stage)


def checkpoint_dir(workdir: str, stage: str) -> str:
  return os.path.join(stage_dir(workdir, stage), CHECKPOINTS)


def candidates_path(workdir: str, mention_set: str) -> str:
  return os.path.join(workdir, "candidates", mention_set)


def teacher_path(workdir: str, mention_set: str) -> str:
  return os.path.join(stage_dir(workdir, "distill"), "teacher", mention_set)


def linker_index_dir(workdir: str) -> str:
  return os.path.join(stage_dir(workdir, "linker"), "index")


def calibration_path(workdir: str) -> str:
  return os.path.join(stage_dir(workdir, "linker"), "calibration.json")


def index_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.index.get("dir") or stage_dir(workdir, "index")


def digest(obj: Any, n: int = 16) -> str:
  """A short, stable digest of a JSON-able object."""
  text = json.dumps(obj, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:n]


def fingerprint_of(*arrays: np.ndarray) -> str:
  """A short digest of arrays (e.g. a mention set's labels)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def identity(stage: str, step: int, fingerprint: Mapping[str, Any]) -> dict:
  """What identifies an artifact: its stage, step and a digest of its fingerprint."""
  flat = json.loads(json.dumps(config_utils.flatten(fingerprint), default=str))
  return {"stage": stage, "step": int(step), "fingerprint": digest(flat)}


# ----------------------------------------------------------- stage configs
def save_config(workdir: str, stage: str, config: ml_collections.ConfigDict) -> None:
  """Stores the config a stage runs with (process 0; atomic)."""
  if jax.process_index() != 0:
    return
  storage.makedirs(stage_dir(workdir, stage))
  atomic_write_json(os.path.join(stage_dir(workdir, stage), CONFIG), config.to_dict())


def load_config(workdir: str, stage: str) -> ml_collections.ConfigDict:
  """The config stage `stage` was trained with, as it stored it."""
  path = os.path.join(stage_dir(workdir, stage), CONFIG)
  if not storage.exists(path):
    raise FileNotFoundError(f"No {stage} in {workdir} ({path} is missing): train it first "
                            f"(--config.mode={MODE_OF[stage]}).")
  return ml_collections.ConfigDict(storage.read_json(path))


# What a stage built on a bi-encoder takes from the bi-encoder's stored config.
BIENCODER_FIELDS = ("tokenizer", "model", "data.max_context_len", "data.max_entity_len")


def inherit(config: ml_collections.ConfigDict, upstream: ml_collections.ConfigDict,
            fields=BIENCODER_FIELDS) -> ml_collections.ConfigDict:
  """`config` with `fields` (dotted) taken from an upstream stage's stored config.

  So a later stage needs only its own flags: the model it starts from is
  described by the config that trained it, not by today's command line.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  for field in fields:
    *path, last = field.split(".")
    src, dst = upstream, out
    for p in path:
      src, dst = src[p], dst[p]
    value = src[last]
    dst[last] = (ml_collections.ConfigDict(value.to_dict())
                 if isinstance(value, ml_collections.ConfigDict) else value)
  return out


def has_checkpoint(workdir: str, stage: str) -> bool:
  d = checkpoint_dir(workdir, stage)
  return storage.isdir(d) and any(x.isdigit() for x in storage.listdir(d))


def final_biencoder(workdir: str) -> str:
  """The stage that holds the bi-encoder a user gets: "distill" if trained, else "biencoder"."""
  return "distill" if has_checkpoint(workdir, "distill") else "biencoder"


MODE_OF = {"biencoder": "train_biencoder", "crossencoder": "train_crossencoder",
           "distill": "distill", "linker": "train_linker", "index": "index",
           "candidates": "train_crossencoder"}


def describe_change(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> str:
  """One line per differing field of two flat fingerprints."""
  keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
  return "\n".join(f"  {k}: stored={theirs.get(k)!r} now={ours.get(k)!r}" for k in keys)
