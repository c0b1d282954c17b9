r"""Peak memory per process building the exact index of a large catalogue on 2 processes.

The catalogue's embeddings either stay split by rows on the devices from the
encoder into the index (`encode.embed_catalogue`: each process encodes and
keeps its own rows) or, the reference, come back to every host in full
(`encode.embed_entities`: replicated output, a numpy [N, d] matrix on each
process, then quantized and placed). On CPU the devices' memory is the
process's own, so the resident set counts both host and device copies.

Two JAX processes on localhost (CPU collectives over gloo, one CPU device
each unless XLA_FLAGS says more) build the index of an N-entity synthetic
catalogue (entity i: a title and three words drawn from i; never held as a
list) with a tiny random bi-encoder: 1 layer, 32 wide, 8 tokens, projected to
--dim (384: the width of the project's MiniLM towers), then save it. Each
path runs as its own pair of processes (one pair after the other; at the
same time with --tiny), and each process reports, from /proc/self/status:
  rss_ready_bytes       VmRSS once JAX, the model and the tokenizer are up;
  peak_build_bytes      VmHWM after encoding + Index.build (the peak so far);
  peak_save_bytes       VmHWM after Index.save as well.
Both paths must find the same top-10 for 16 fixed queries (top10_agreement).
Prints one JSON line: both paths per process and the ratio sharded /
replicated of the larger process's build peak (and of that peak minus
rss_ready: what the catalogue itself costs).

  python bench/index_rss.py                 # 1M entities (about 10 min on 2 cores)
  python bench/index_rss.py --tiny          # 4,096 entities: CI (tests/test_bench_index_rss.py)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ("sharded", "replicated")
WORDS = 56
VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]",
         "[MASK]"] + [f"w{i}" for i in range(WORDS)]


def proc_status() -> dict[str, int]:
  """VmRSS and VmHWM (peak) of this process, in bytes."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(("VmRSS:", "VmHWM:")):
        key, kb = line.split()[:2]
        out[key[:-1]] = int(kb) * 1024
  return out


class SyntheticCatalogue:
  """N entities made on demand from their row number: what `embed_*` read (take, len)."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def take(self, rows):
    from blink_jax.data.jsonl import Entity  # pylint: disable=g-import-not-at-top
    return [Entity(int(r), f"w{r % WORDS}",
                   " ".join(f"w{(r // WORDS ** j) % WORDS}" for j in (1, 2, 3)), None)
            for r in np.asarray(rows)]


def worker(args) -> None:
  """One process of one path: build, search, save; prints its JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{args.port}", 2, args.process_id)
  import ml_collections  # pylint: disable=g-import-not-at-top
  from blink_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from blink_jax import sharding  # pylint: disable=g-import-not-at-top
  from blink_jax import tokenization  # pylint: disable=g-import-not-at-top
  from blink_jax.inference import encode  # pylint: disable=g-import-not-at-top
  from blink_jax.models import biencoder  # pylint: disable=g-import-not-at-top

  tok = tokenization.Tokenizer.from_pretrained(args.vocab)
  model = biencoder.build(ml_collections.ConfigDict(dict(
      init_from="", pooling="cls", projection_dim=args.dim,
      bert=dict(vocab_size=len(VOCAB), hidden_size=32, num_layers=1, num_heads=2,
                intermediate_size=64, max_position=16, dropout=0.0, attention_dropout=0.0))),
      vocab_size=len(VOCAB), seed=0)
  config = ml_collections.ConfigDict(dict(data=dict(max_entity_len=8),
                                          eval=dict(batch_size=args.batch)))
  mesh = sharding.make_mesh()
  catalogue = SyntheticCatalogue(args.n)
  ready = proc_status()["VmRSS"]
  t0 = time.time()
  if args.path == "sharded":
    emb = encode.embed_catalogue(model, tok, catalogue, config, mesh)
  else:
    emb = encode.embed_entities(model, tok, catalogue, config, mesh)
  index = index_lib.Index.build(emb, np.arange(args.n), None, backend="exact", mesh=mesh)
  del emb
  build_s = time.time() - t0
  peak_build = proc_status()["VmHWM"]
  queries = np.random.default_rng(0).normal(size=(16, args.dim)).astype(np.float32)
  _, top = index.search(queries, 10)
  t1 = time.time()
  index.save(os.path.join(args.out, args.path))
  print(json.dumps({
      "path": args.path, "process": jax.process_index(), "devices": mesh.size,
      "rss_ready_bytes": ready, "peak_build_bytes": peak_build,
      "peak_save_bytes": proc_status()["VmHWM"], "build_s": round(build_s, 1),
      "save_s": round(time.time() - t1, 1), "top10": top.tolist()}))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(path: str, args, vocab: str, out: str) -> list[subprocess.Popen]:
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", f"--path={path}",
       f"--port={port}", f"--process_id={i}", f"--n={args.n}", f"--dim={args.dim}",
       f"--batch={args.batch}", f"--vocab={vocab}", f"--out={out}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def collect(procs: list[subprocess.Popen]) -> list[dict]:
  lines = []
  for p in procs:
    out, err = p.communicate()
    if p.returncode != 0:
      raise RuntimeError(f"A worker failed ({p.returncode}):\n{err[-3000:]}")
    lines.append(json.loads(out.strip().splitlines()[-1]))
  return sorted(lines, key=lambda r: r["process"])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--batch", type=int, default=2048)
  parser.add_argument("--tiny", action="store_true", help="4,096 entities, both pairs at once.")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  for name in ("path", "port", "process_id", "vocab", "out"):
    parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    args.port, args.process_id = int(args.port), int(args.process_id)
    worker(args)
    return
  if args.tiny:
    args.n, args.batch = 4096, 256
  with tempfile.TemporaryDirectory() as tmp:
    vocab = os.path.join(tmp, "vocab")
    os.makedirs(vocab)
    with open(os.path.join(vocab, "vocab.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(VOCAB) + "\n")
    if args.tiny:  # Memory is per process: the pairs may overlap; time matters in CI.
      pending = {p: launch(p, args, vocab, tmp) for p in PATHS}
      runs = {p: collect(pending[p]) for p in PATHS}
    else:  # One pair at a time: two pairs at once might not fit in memory.
      runs = {p: collect(launch(p, args, vocab, tmp)) for p in PATHS}
  tops = {p: np.asarray(runs[p][0].pop("top10")) for p in PATHS}
  for p in PATHS:
    runs[p][1].pop("top10")
  peak = {p: max(r["peak_build_bytes"] for r in runs[p]) for p in PATHS}
  extra = {p: max(r["peak_build_bytes"] - r["rss_ready_bytes"] for r in runs[p]) for p in PATHS}
  matrix = args.n * args.dim * 4
  print(json.dumps({
      "bench": "index_rss", "tiny": args.tiny, "entities": args.n, "dim": args.dim,
      "processes": 2, "devices": runs["sharded"][0]["devices"],
      "float32_matrix_bytes": matrix, "sharded": runs["sharded"],
      "replicated_reference": runs["replicated"],
      "peak_build_bytes": peak, "peak_build_over_matrix": {
          p: round(peak[p] / matrix, 2) for p in PATHS},
      "ratio_sharded_over_replicated_peak": round(peak["sharded"] / peak["replicated"], 3),
      "ratio_sharded_over_replicated_catalogue_cost": round(
          extra["sharded"] / extra["replicated"], 3),
      "top10_agreement": float((tops["sharded"] == tops["replicated"]).mean())}))


if __name__ == "__main__":
  main()
