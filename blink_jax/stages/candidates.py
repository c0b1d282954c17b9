"""Stage "candidates": each mention's top-k entities by the trained bi-encoder, stored.

Reads: WORKDIR/biencoder. Writes: WORKDIR/candidates/<set>/ (Orbax arrays + the meta that made them).
The cross-encoder trains and is evaluated on these lists, and distillation
trains the student on the same ones, so retrieval runs once per bi-encoder
checkpoint. Each file records what made it (the bi-encoder's identity, k, the
mentions' and catalogue's labels); a file that does not match the current
bi-encoder or data is recomputed, never used.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from absl import logging
from jax.sharding import Mesh

from blink_jax import checkpoint as ckpt_lib
from blink_jax import workdir as workdir_lib
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import load as load_lib
from blink_jax.inference import retrieve
from blink_jax.inference.ranking import Candidates

STAGE = "candidates"


def for_sets(config, workdir: str, sets: Mapping[str, Records[Mention]],
             entities_for: Callable[[Records[Mention]], Records[Entity]],
             mesh: Mesh | None = None) -> dict[str, Candidates]:
  """The stored top-`config.candidates.k` lists of each mention set, computed if needed.

  `entities_for(mentions)` gives the catalogue a set is ranked against; the
  bi-encoder is the latest checkpoint in WORKDIR/biencoder, run with the
  config it was trained with.
  """
  k = int(config.candidates.k)
  trained = load_lib.load(workdir, "biencoder", mesh)
  tok = load_lib.tokenizer(trained.config.tokenizer)
  out = {}
  for name, mentions in sets.items():
    entities = entities_for(mentions)
    meta = {"biencoder": trained.identity, "k": k, "retrieval": _retrieval(config),
            "mentions": workdir_lib.fingerprint_of(mentions.labels),
            "entities": workdir_lib.fingerprint_of(entities.labels)}
    path = workdir_lib.candidates_path(workdir, name)
    stored = ckpt_lib.load_arrays(path, meta)
    if stored is None:
      logging.info("Retrieving the top %d of %d %s mentions.", k, len(mentions), name)
      dense = retrieve.catalogue(trained.model, tok, entities, trained.config, mesh,
                                 model_id=trained.identity)
      c = retrieve.retriever(dense, config).retrieve(mentions, k)
      ckpt_lib.save_arrays(path, dataclasses.asdict(c), meta)
    else:
      c = Candidates(**stored)
    out[name] = c
  return out


def identity(workdir: str, config) -> dict:
  """What the stored candidates are made from: the bi-encoder's identity and k.

  Downstream stages put this in their fingerprint, so a retrained bi-encoder
  makes their checkpoints stale.
  """
  return {"biencoder": load_lib.identity(workdir, "biencoder"), "k": int(config.candidates.k),
          "retrieval": _retrieval(config)}


def _retrieval(config) -> dict | None:
  r = config.get("retrieval")
  return r.to_dict() if r is not None and r.hybrid else None
