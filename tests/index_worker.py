"""One process of tests/test_multiprocess.py's index test (run as a script, not collected).

    python tests/index_worker.py OUT_DIR DATA_DIR [--coordinator_address=H:P
        --num_processes=N --process_id=I]

Encodes a small catalogue with a tiny random bi-encoder straight into a
row-sharded exact index, searches, adds (one new id, one replaced), deletes,
saves and loads it again; writes what it saw to OUT_DIR/result-I.json.
"""

import argparse
import json
import os
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from blink_jax import index as index_lib  # pylint: disable=wrong-import-position
from blink_jax import sharding  # pylint: disable=wrong-import-position
from blink_jax import tokenization  # pylint: disable=wrong-import-position
from blink_jax.data.jsonl import Entity  # pylint: disable=wrong-import-position
from blink_jax.data.records import Records  # pylint: disable=wrong-import-position
from blink_jax.inference import encode  # pylint: disable=wrong-import-position
import tiny_model  # pylint: disable=wrong-import-position

N = 301  # Not a multiple of any device count: the last device's block is padded.


def entities(n, first, seed):
  rng = np.random.default_rng(seed)
  return Records.of([Entity(first + i, f"w{rng.integers(56)}",
                            " ".join(f"w{x}" for x in rng.integers(56, size=rng.integers(1, 9))),
                            f"world{i % 2}") for i in range(n)])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("out"), p.add_argument("data")
  p.add_argument("--coordinator_address"), p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int, default=0)
  args = p.parse_args()
  if args.num_processes:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  os.makedirs(args.out, exist_ok=True)
  tok = tokenization.Tokenizer.from_pretrained(args.data)
  model = tiny_model.biencoder_model()
  config = ml_collections.ConfigDict(dict(data=dict(max_entity_len=12),
                                          eval=dict(batch_size=32)))
  mesh = sharding.make_mesh()
  cat = entities(N, 100, seed=0)
  rows = encode.embed_catalogue(model, tok, cat, config, mesh)
  held = sum(s.data.shape[0] for s in rows.array.addressable_shards)
  index = index_lib.Index.build(rows, cat.labels, [e.title for e in cat], cat.worlds,
                                backend="exact", model={"step": 0, "fingerprint": "t"})
  q = np.random.default_rng(1).normal(size=(40, 32)).astype(np.float32)
  qw = [f"world{i % 2}" for i in range(40)]
  found = {"built": index.search(q, 10), "built_worlds": index.search(q, 10, qw)}
  # Add two new entities and replace entity 105; delete three others.
  new = Records.of(list(entities(2, 5000, seed=2)) + [Entity(105, "w3", "w4 w5", "world1")])
  index.add(encode.embed_entities(model, tok, new, config, mesh), new.labels,
            [e.title for e in new], new.worlds)
  index.delete([100, 200, 400])
  found["changed"] = index.search(q, 10)
  index.save(os.path.join(args.out, "ix"))
  back = index_lib.Index.load(os.path.join(args.out, "ix"), mesh=mesh)
  found["loaded"] = back.search(q, 10, qw)
  result = {"process_count": jax.process_count(), "devices": mesh.size, "held": held,
            "rows": int(rows.array.shape[0]), "count": len(back)}
  for name, (s, i) in found.items():
    result[name] = {"scores": s.tolist(), "ids": i.tolist()}
  with open(os.path.join(args.out, f"result-{jax.process_index()}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
