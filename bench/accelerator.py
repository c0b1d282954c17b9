"""What an accelerator gives blink_jax: BERT-base bi-encoder training and exact search.

Two measurements, on every local device of the machine (one process):

* train: the bi-encoder stage's own jitted step (two BERT-base towers, in-batch
  softmax, AdamW, dropout) on a random batch, data parallel over the devices,
  parameters in float32 and matmuls in `--dtype`. Reports pairs/s, model TFLOP/s
  and MFU against the chip's peak dense TFLOP/s for that dtype (a table below,
  or --peak_tflops; null when unknown, as for a CPU).
* search: `ExactSearch`, the exact index's device search, over a catalogue of
  N x D random rows stored in `--storage`, a batch of queries at a time. Reports
  ms per batch and queries/s.

Goals (issue 14): >= 50% MFU for BERT-base training in bf16, and exact search of
5.9M x 768 bf16 in <= 2.5 ms per batch of 64 queries, top 64. `--tiny` runs both
on a small model and catalogue in seconds (CI runs it on CPU so that the script
cannot rot; its figures mean nothing).

  python bench/accelerator.py                  # the real sizes
  python bench/accelerator.py --tiny           # smoke run

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

# Peak dense TFLOP/s per chip (vendor figures, no sparsity), by the start of
# jax.Device.device_kind, for bfloat16 and float32 matmuls (TPUs run float32
# matmuls as several bf16 passes; their float32 peak is not published).
PEAK_TFLOPS = {
    "NVIDIA H200": {"bfloat16": 989.0, "float32": 67.0},
    "NVIDIA H100": {"bfloat16": 989.0, "float32": 67.0},
    "NVIDIA A100": {"bfloat16": 312.0, "float32": 19.5},
    "NVIDIA L4": {"bfloat16": 121.0, "float32": 30.3},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5e": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},
    "TPU v6e": {"bfloat16": 918.0},
}

BERT_BASE = dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072,
                 max_position=512, dropout=0.1, attention_dropout=0.1)
TINY_BERT = dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=128,
                 max_position=64, dropout=0.1, attention_dropout=0.1)
VOCAB = 30522


def train_flops_per_pair(bert: dict, context_len: int, entity_len: int) -> float:
  """Model FLOPs of one training pair: forward + backward (3x the forward) of both towers.

  Per token and layer the forward pass multiplies by the Q, K, V, output and two
  feed-forward matrices (2 * (4 d^2 + 2 d f) FLOPs) and computes attention scores and
  their weighted sum over the sequence (2 * 2 * T * d). Embeddings, LayerNorm, softmax
  and the B x B score matrix are left out, as is usual for MFU.
  """
  d, f, layers = bert["hidden_size"], bert["intermediate_size"], bert["num_layers"]
  per_token = lambda t: layers * (2 * (4 * d * d + 2 * d * f) + 4 * t * d)
  forward = context_len * per_token(context_len) + entity_len * per_token(entity_len)
  return 3.0 * forward


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  for prefix, peaks in PEAK_TFLOPS.items():
    if device_kind.startswith(prefix):
      return peaks.get(dtype)
  return None


def _median_seconds(fn, repeats: int, warmup: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def bench_train(args, bert: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from blink_jax import optim, sharding, trainer  # pylint: disable=g-import-not-at-top
  from blink_jax.models import biencoder  # pylint: disable=g-import-not-at-top
  from blink_jax.stages import biencoder as stage  # pylint: disable=g-import-not-at-top
  model_cfg = ml_collections.ConfigDict(dict(
      init_from="", init_num_layers=0, pooling="cls", projection_dim=0,
      bert={**bert, "dtype": args.dtype}, bert_overrides={}))
  fm, params = stage.Functional.split(biencoder.build(model_cfg, vocab_size=VOCAB))
  tx, schedule = optim.make(ml_collections.ConfigDict(dict(
      learning_rate=1e-5, warmup_fraction=0.1, weight_decay=0.01, grad_clip_norm=1.0)), 1000)
  mesh = sharding.make_mesh()
  state, state_sh = trainer.create_state(params, tx, mesh)
  step_fn = trainer.compile_step(stage.make_train_step(fm, tx, schedule, 1, 0, mesh),
                                 state_sh, mesh)
  b, lc, le = args.batch, args.context_len, args.entity_len
  rng = np.random.default_rng(0)
  ids = lambda n, l: np.concatenate(
      [np.full((n, 1), 101), rng.integers(1000, VOCAB, size=(n, l - 1))], 1).astype(np.int32)
  labels = np.arange(b, dtype=np.int32)
  batch = sharding.global_batch(
      {"context_ids": ids(b, lc), "context_mask": np.ones((b, lc), np.int32),
       "entity_ids": ids(b, le)[:, None], "entity_mask": np.ones((b, 1, le), np.int32),
       "entity_labels": labels[:, None], "labels": labels}, mesh)
  box = [state]

  def step():
    box[0], metrics = step_fn(box[0], batch)
    jax.block_until_ready(metrics["loss"])

  seconds, times = _median_seconds(step, args.repeats, args.warmup)
  pairs_per_s = b / seconds
  tflops = pairs_per_s * train_flops_per_pair(bert, lc, le) / 1e12
  kind = jax.devices()[0].device_kind
  peak = args.peak_tflops or peak_tflops(kind, args.dtype)
  chips = len(jax.devices())
  return {"batch": b, "context_len": lc, "entity_len": le, "dtype": args.dtype,
          "step_ms_median": round(seconds * 1e3, 2),
          "step_ms_min_max": [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
          "pairs_per_s": round(pairs_per_s, 1), "model_tflops_per_s": round(tflops, 3),
          "peak_tflops_per_chip": peak,
          "mfu": None if peak is None else round(tflops / (peak * chips), 4)}


def bench_search(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from blink_jax import exact_search  # pylint: disable=g-import-not-at-top
  n, d = args.catalogue, args.dim
  index = exact_search.ExactSearch(d, args.storage)
  # Rows made on the host in chunks, already in the storage dtype (5.9M x 768 bf16 is
  # 9 GB; float32 first would need twice that).
  rng = np.random.default_rng(0)
  values = np.empty((n, d), exact_search._dtype(args.storage))  # pylint: disable=protected-access
  scales = np.ones(n, np.float32)
  for start in range(0, n, 262144):
    part = rng.standard_normal((min(262144, n - start), d), np.float32)
    values[start:start + len(part)], scales[start:start + len(part)] = (
        exact_search.quantize(part, args.storage))
  index.load(values, scales, np.zeros(n, np.int32))
  del values
  queries = rng.standard_normal((args.queries, d), np.float32)
  seconds, times = _median_seconds(lambda: index.search(queries, args.k), args.repeats,
                                   args.warmup)
  return {"catalogue": n, "dim": d, "storage": args.storage, "queries_per_batch": args.queries,
          "k": args.k, "ms_per_batch_median": round(seconds * 1e3, 3),
          "ms_per_batch_min_max": [round(min(times) * 1e3, 3), round(max(times) * 1e3, 3)],
          "queries_per_s": round(args.queries / seconds, 1),
          "device_bytes": index.memory_bytes(), "devices": len(jax.devices())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="Small sizes: a smoke run.")
  parser.add_argument("--only", choices=("train", "search"), default=None)
  parser.add_argument("--dtype", default=None, choices=("bfloat16", "float32"),
                      help="Matmul dtype (default: bfloat16 on accelerators, float32 on CPU).")
  parser.add_argument("--batch", type=int, default=None, help="Global batch (default 128).")
  parser.add_argument("--context_len", type=int, default=None)
  parser.add_argument("--entity_len", type=int, default=None)
  parser.add_argument("--catalogue", type=int, default=None, help="Rows (default 5.9M).")
  parser.add_argument("--dim", type=int, default=None)
  parser.add_argument("--storage", default="bfloat16", choices=("float32", "bfloat16", "int8"))
  parser.add_argument("--queries", type=int, default=64)
  parser.add_argument("--k", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="Peak dense TFLOP/s of one chip, if the table lacks it.")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  platform = jax.devices()[0].platform
  tiny = args.tiny
  args.dtype = args.dtype or ("float32" if platform == "cpu" else "bfloat16")
  args.batch = args.batch or (8 if tiny else 128)
  args.context_len = args.context_len or (16 if tiny else 128)
  args.entity_len = args.entity_len or (16 if tiny else 128)
  args.catalogue = args.catalogue or (4096 if tiny else 5_903_530)
  args.dim = args.dim or (64 if tiny else 768)
  args.repeats = args.repeats or (3 if tiny else 20)
  bert = TINY_BERT if tiny else BERT_BASE
  out = {"bench": "accelerator", "tiny": tiny, "platform": platform,
         "device_kind": jax.devices()[0].device_kind, "devices": len(jax.devices()),
         "jax": jax.__version__,
         "model": "tiny BERT x2 towers" if tiny else "BERT-base x2 towers"}
  if args.only in (None, "train"):
    out["train"] = bench_train(args, bert)
  if args.only in (None, "search"):
    out["search"] = bench_search(args)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
