"""Each mention's top-k entities by the trained bi-encoder, retrieved once and stored.

The cross-encoder trains and is evaluated on these lists, and distillation
trains the student on the same ones, so retrieval runs once per bi-encoder
checkpoint: the lists of each mention set are saved to
WORKDIR/candidates/<set>.npz with what made them (the bi-encoder's step and
config fingerprint, k, the mentions' and catalogue's labels). A file that
does not match the current model or data is recomputed, never used.

`save_arrays` / `load_arrays` are the one way stages store such arrays
(candidates, teacher scores): written to a temporary file and renamed, so a
killed run never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from blink_jax import evaluate
from blink_jax import index as index_lib
from blink_jax import tokenization
from blink_jax import train_biencoder
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.models import bert_checkpoint


def fingerprint_of(*arrays: np.ndarray) -> str:
  """A short digest of arrays (e.g. a mention set's labels)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def save_arrays(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
  """Writes arrays and a JSON `meta` to one .npz, atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}.npz"
  np.savez(tmp, **arrays, __meta__=np.asarray(json.dumps(meta, sort_keys=True)))
  os.replace(tmp, path)


def load_arrays(path: str, meta: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
  """The arrays of `path` if it exists and was written with this `meta`, else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      theirs = json.loads(str(f["__meta__"]))
      if theirs != json.loads(json.dumps(meta, sort_keys=True)):
        logging.info("%s was made by another model or data (%s); recomputing.", path, theirs)
        return None
      return {k: f[k] for k in f.files if k != "__meta__"}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    logging.warning("%s is unreadable (%s); recomputing.", path, e)
    return None


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Ranked candidate entities of N mentions.

  ids: [N, K] entity ids, best first; -1 pads lists shorter than K (a
    world with fewer entities).
  scores: [N, K] float32 bi-encoder scores (-inf on padding).
  labels: [N] gold entity ids (-1: NIL).
  """

  ids: np.ndarray
  scores: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def top(self, k: int) -> "Candidates":
    if k > self.ids.shape[1]:
      raise ValueError(f"{k} candidates asked for, {self.ids.shape[1]} stored: "
                       "raise config.candidates.k.")
    return Candidates(self.ids[:, :k], self.scores[:, :k], self.labels)

  def gold_positions(self) -> np.ndarray:
    """[N] column of each mention's gold entity, -1 where it was not retrieved."""
    hit = (self.ids == self.labels[:, None]) & (self.labels[:, None] >= 0)
    return np.where(hit.any(1), hit.argmax(1), -1)


def retrieve(model, tok: tokenization.Tokenizer, entities: Records[Entity],
             mentions: Records[Mention], k: int, config, mesh: Mesh | None = None
             ) -> Candidates:
  """Top-k of each mention (within its world) by `model`, through the index."""
  ent = evaluate.embed_entities(model, tok, entities, config, mesh)
  ctx = evaluate.embed_mentions(model, tok, mentions, config, mesh)
  index = index_lib.Index.build(ent, entities.labels, None, entities.worlds,
                                backend="exact", mesh=mesh)
  worlds = None if set(mentions.worlds) == {None} else mentions.worlds
  scores, ids = index.search(ctx, k, worlds)
  return Candidates(ids=ids.astype(np.int64), scores=scores.astype(np.float32),
                    labels=mentions.labels.astype(np.int64))


def for_sets(config, workdir: str, sets: Mapping[str, Records[Mention]],
             entities_for, mesh: Mesh | None = None) -> dict[str, Candidates]:
  """The stored top-`config.candidates.k` lists of each mention set, computed if needed.

  `entities_for(mentions)` gives the catalogue a set is ranked against; the
  bi-encoder is the latest checkpoint in `workdir`.
  """
  k = int(config.candidates.k)
  model, step = train_biencoder.load_trained(config, workdir, mesh)
  model_key = index_lib.model_id(step, train_biencoder.fingerprint(config))
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  out = {}
  for name, mentions in sets.items():
    entities = entities_for(mentions)
    meta = {"biencoder": model_key, "k": k,
            "mentions": fingerprint_of(mentions.labels),
            "entities": fingerprint_of(entities.labels)}
    path = os.path.join(workdir, "candidates", f"{name}.npz")
    stored = load_arrays(path, meta)
    if stored is None:
      logging.info("Retrieving the top %d of %d %s mentions.", k, len(mentions), name)
      c = retrieve(model, tok, entities, mentions, k, config, mesh)
      save_arrays(path, dataclasses.asdict(c), meta)
    else:
      c = Candidates(**stored)
    out[name] = c
  return out
