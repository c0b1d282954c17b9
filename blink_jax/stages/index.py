"""Stage "index" (--config.mode=index): build, grow or shrink the final bi-encoder's index.

Reads: the final bi-encoder (WORKDIR/distill if trained, else
WORKDIR/biencoder: the one the linker starts from). Writes: WORKDIR/index/.

  # Build WORKDIR/index from the final bi-encoder, over the data's catalogue
  # (or --config.index.entities=FILE.jsonl):
  python -m blink_jax.main --config=configs/demo.py --workdir=W --config.mode=index
  # Add entities (new ids are added, known ids replaced), delete others:
  ... --config.mode=index --config.index.add=new.jsonl --config.index.delete=17,42
  ... --config.index.delete=Q42,Q7   # a catalogue of string ids (or a file, one per line)

The catalogue is read and encoded in a stream, split over devices and
processes (inference.encode), and its embeddings stay split by rows on the
devices into the exact index: no host holds the whole matrix. Adding or
deleting loads the saved index, checks that the current final bi-encoder made
it, changes it and saves it again: only the new entities are encoded.
"""

from __future__ import annotations

import json
import time

import jax
import ml_collections
from absl import logging

from blink_jax import index as index_lib
from blink_jax import sharding
from blink_jax import storage
from blink_jax import workdir as workdir_lib
from blink_jax.data import jsonl
from blink_jax.data import sources
from blink_jax.inference import encode
from blink_jax.inference import load as load_lib


def parse_ids(spec: str) -> list[tuple[str, str]]:
  """(where, id text) of each id in "3,17" or in the file at `spec` (one id per line)."""
  if storage.isfile(spec):
    with storage.open(spec, encoding="utf-8") as f:
      return [(f"{spec}:{n}", line.strip()) for n, line in enumerate(f, 1) if line.strip()]
  return [(f"index.delete item {n}", text)
          for n, text in enumerate((x.strip() for x in spec.split(",") if x.strip()), 1)]


def labels_to_delete(index: index_lib.Index, spec: str) -> list[int]:
  """The labels of the entities `spec` names by their catalogue ids.

  A text that reads as an integer names the integer id if the index has it, else the
  string id (a catalogue may have "42" as a string); a JSON string ("42", quotes included)
  names only the string id; an id in none of these is an error.
  """
  out = []
  for where, text in parse_ids(spec):
    if text.startswith('"'):
      try:
        candidates = [json.loads(text)]
      except json.JSONDecodeError:
        raise ValueError(f"{where}: {text} is not a JSON string.") from None
    else:
      try:
        candidates = [int(text), text]
      except ValueError:
        candidates = [text]
    labels = [int(x) for x in index.label_of(candidates) if x >= 0]
    if not labels:
      raise ValueError(f"{where}: {text!r} is not the id of an entity in the index.")
    out.append(labels[0])
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
      ids = labels_to_delete(index, ic.delete)
      index.delete(ids)
      logging.info("Deleted %d entities.", len(ids))
    if ic.get("add"):
      new = jsonl.open_entities(ic.add, skip_bad=config.data.get("skip_bad", False))
      emb = encode.embed_entities(model, tok, new, config, mesh)
      records = list(new)
      # The file's own labels are record positions when its ids are strings: the index
      # gives each id its label (the one it has, or a new one).
      keys = [e.entity_id for e in records]
      index.add(emb, index.labels_for(keys), [e.title for e in records], new.worlds,
                keys=keys if new.keys is not None or index.keys is not None else None,
                urls=[e.url for e in records])
      logging.info("Added %d entities from %s.", len(new), ic.add)
  else:
    if ic.get("entities"):
      entities = jsonl.open_entities(ic.entities, skip_bad=config.data.get("skip_bad", False))
    else:
      entities = sources.load(config, workdir).entities
    logging.info("Encoding %d entities with the %s of step %d.", len(entities),
                 model_key["stage"], model_key["step"])
    # Left split by rows on the devices: no process holds the whole matrix.
    emb = encode.embed_catalogue(model, tok, entities, config, mesh)
    # Titles and urls are kept for results; only process 0 writes them.
    writer = jax.process_index() == 0
    records = list(entities) if writer else None
    worlds = entities.worlds if set(entities.worlds) != {None} else None
    index = index_lib.Index.build(
        emb, entities.labels, [e.title for e in records] if writer else None, worlds,
        backend=ic.backend, storage=ic.storage, mesh=mesh, k=ic.k,
        target_recall=ic.target_recall, scann=dict(ic.scann), model=model_key,
        seed=config.seed, keys=entities.keys, urls=[e.url for e in records] if writer else None)
  index.save(directory)
  mem = index.memory_bytes()
  logging.info("Index of %d entities (%s, %s%s) saved to %s in %.0fs.", len(index),
               index.backend, index.storage,
               "" if mem is None else f", {mem / 2**20:.1f} MiB on devices",
               directory, time.time() - t0)
  return index
