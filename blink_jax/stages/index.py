"""Stage "index" (--config.mode=index): build, grow or shrink the final bi-encoder's index.

Reads: the final bi-encoder (WORKDIR/distill if trained, else
WORKDIR/biencoder: the one the linker starts from). Writes: WORKDIR/index/.

  # Build WORKDIR/index from the final bi-encoder, over the data's catalogue
  # (or --config.index.entities=FILE.jsonl):
  python -m blink_jax.main --config=configs/demo.py --workdir=W --config.mode=index
  # Add entities (new ids are added, known ids replaced), delete others:
  ... --config.mode=index --config.index.add=new.jsonl --config.index.delete=17,42

The catalogue is read and encoded in a stream, split over devices and
processes (inference.encode). Adding or deleting loads the saved index, checks
that the current final bi-encoder made it, changes it and saves it again: only
the new entities are encoded.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
from absl import logging

from blink_jax import index as index_lib
from blink_jax import sharding
from blink_jax import workdir as workdir_lib
from blink_jax.data import jsonl
from blink_jax.data import sources
from blink_jax.inference import encode
from blink_jax.inference import load as load_lib


def parse_ids(spec: str) -> list[int]:
  """"3,17" or the path of a file with one id per line."""
  if os.path.isfile(spec):
    with open(spec) as f:
      lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    where = lambda n: f"{spec}:{n}"
  else:
    lines = list(enumerate((x.strip() for x in spec.split(",") if x.strip()), 1))
    where = lambda n: f"index.delete item {n}"
  out = []
  for n, text in lines:
    try:
      out.append(int(text))
    except ValueError:
      raise ValueError(f"{where(n)}: {text!r} is not an entity id.") from None
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> index_lib.Index:
  """Builds (or, with index.add / index.delete, updates) the index; returns it."""
  t0 = time.time()
  ic = config.index
  mesh = sharding.make_mesh(config.get("mesh"))
  trained = load_lib.final_biencoder(workdir, mesh)
  model, model_key = trained.model, trained.identity
  # Entities are read as the bi-encoder was trained to read them.
  config = workdir_lib.inherit(config, trained.config)
  tok = load_lib.tokenizer(config.tokenizer)
  directory = workdir_lib.index_dir(config, workdir)

  if ic.get("add") or ic.get("delete"):
    index = index_lib.Index.load(directory, expect_model=model_key, mesh=mesh)
    if ic.get("delete"):
      ids = parse_ids(ic.delete)
      index.delete(ids)
      logging.info("Deleted %d entities.", len(ids))
    if ic.get("add"):
      new = jsonl.open_entities(ic.add, skip_bad=config.data.get("skip_bad", False))
      emb = encode.embed_entities(model, tok, new, config, mesh)
      records = list(new)
      index.add(emb, new.labels, [e.title for e in records], new.worlds)
      logging.info("Added %d entities from %s.", len(new), ic.add)
  else:
    if ic.get("entities"):
      entities = jsonl.open_entities(ic.entities, skip_bad=config.data.get("skip_bad", False))
    else:
      entities = sources.load(config, workdir).entities
    logging.info("Encoding %d entities with the %s of step %d.", len(entities),
                 model_key["stage"], model_key["step"])
    emb = encode.embed_entities(model, tok, entities, config, mesh)
    # Titles are kept for results; only process 0 writes them.
    titles = ([e.title for e in entities] if jax.process_index() == 0 else None)
    worlds = entities.worlds if set(entities.worlds) != {None} else None
    index = index_lib.Index.build(
        emb, entities.labels, titles, worlds, backend=ic.backend, storage=ic.storage,
        mesh=mesh, k=ic.k, target_recall=ic.target_recall, scann=dict(ic.scann),
        model=model_key, seed=config.seed)
  index.save(directory)
  mem = index.memory_bytes()
  logging.info("Index of %d entities (%s, %s%s) saved to %s in %.0fs.", len(index),
               index.backend, index.storage,
               "" if mem is None else f", {mem / 2**20:.1f} MiB on devices",
               directory, time.time() - t0)
  return index
