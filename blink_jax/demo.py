"""The demo: zero-shot entity retrieval on synthetic worlds, end to end on a CPU.

Generates (once) the synthetic Zeshel-style worlds into WORKDIR/data, trains
the bi-encoder on the training worlds and evaluates on the unseen test
worlds beside BM25 and the untrained bi-encoder. Prints one table of
recall@k and writes it to WORKDIR/metrics.json.
Importable without absl: `demo.run(config, workdir)`.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import ml_collections
from absl import logging

from blink_jax import evaluate
from blink_jax import metric_writer
from blink_jax import tokenization
from blink_jax import train_biencoder
from blink_jax.data import sources
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder


def format_table(rows: dict[str, dict], ks: Sequence[int]) -> str:
  """A fixed-width table of macro-averaged recall@k, one row per system."""
  head = f"{'system':<28}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
  lines = [head, "-" * len(head)]
  for name, report in rows.items():
    lines.append(f"{name:<28}" + "".join(
        f"{report[f'macro/recall@{k}']:>8.3f}" for k in ks))
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs the demo; returns {system: recall report on the test worlds}."""
  t0 = time.time()
  data = sources.load(config, workdir)
  test = data.evals["test"]
  test_entities = data.entities_for(test)
  logging.info("Catalogue: %d entities (%d in the unseen test worlds); %d train, "
               "%d test mentions.", len(data.entities), len(test_entities),
               len(data.train), len(test))
  ks = list(config.eval.ks)

  rows = {}
  tok = tokenization.Tokenizer.from_pretrained(
      bert_checkpoint.resolve(config.tokenizer))
  untrained = biencoder.build(config.model, vocab_size=tok.vocab_size, seed=config.seed)
  rows["bi-encoder (untrained)"] = evaluate.biencoder_report(
      untrained, tok, test_entities, test, config)
  trained = train_biencoder.train_and_evaluate(config, workdir, data)
  bm25 = trained["baselines"]["test"].get("BM25") or evaluate.recall_report(
      evaluate.bm25_ranking(test_entities, test, max(ks)), test, ks)
  rows = {"BM25": bm25, **rows, "bi-encoder (trained)": trained["metrics"]["test"]}

  writer = metric_writer.MetricWriter(workdir)
  for name, report in rows.items():
    writer.results(f"test/{name}", report)
  writer.close()
  print(f"\nZero-shot retrieval on {len(set(test.worlds))} unseen worlds "
        f"({len(test)} mentions, macro-averaged over worlds):")
  print(format_table(rows, ks))
  print(f"\n[{time.time() - t0:.0f}s] metrics in {os.path.join(workdir, 'metrics.json')}")
  return rows
