"""The demo: zero-shot entity linking on synthetic worlds, every stage, on a CPU.

Generates (once) the synthetic Zeshel-style worlds into WORKDIR/data, then
runs BLINK's chain (`stages/pipeline.py`) on the training worlds: bi-encoder (in-batch and mined
hard negatives) -> its top-k candidates -> cross-encoder re-ranker ->
distillation of the cross-encoder into the bi-encoder -> the end-to-end
linker (mention detection trained jointly with linking on the training
documents). Prints two tables on the unseen test worlds: retrieval and
re-ranking of the gold mentions (BM25, the untrained bi-encoder, the trained
one, it re-ranked by the cross-encoder, the distilled one), and end-to-end
linking of the test documents (fast and full mode); all in
WORKDIR/metrics.json too. Every stage resumes from its checkpoints.
Importable without absl: `demo.run(config, workdir)`.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import ml_collections
from absl import logging

from blink_jax import evaluate
from blink_jax import metric_writer
from blink_jax.data import sources
from blink_jax.inference import load as load_lib
from blink_jax.stages import pipeline


def format_table(rows: Mapping[str, dict], ks: Sequence[int]) -> str:
  """A fixed-width table of macro-averaged metrics, one row per system.

  Columns: recall@k for each k, then normalized and unnormalized accuracy
  when the reports have them.
  """
  cols = [(f"R@{k}", f"macro/recall@{k}") for k in ks]
  if all("macro/normalized_accuracy" in r for r in rows.values()):
    cols += [("norm.acc", "macro/normalized_accuracy"),
             ("unnorm.acc", "macro/unnormalized_accuracy")]
  head = f"{'system':<32}" + "".join(f"{name:>11}" for name, _ in cols)
  lines = [head, "-" * len(head)]
  for system, report in rows.items():
    lines.append(f"{system:<32}" + "".join(f"{report[key]:>11.3f}" for _, key in cols))
  return "\n".join(lines)


def format_linking(results: Mapping[str, dict]) -> str:
  """A fixed-width table of end-to-end P/R/F1, one row per mode."""
  cols = [("mention F1", "mention_detection/strong/f1"),
          ("(weak)", "mention_detection/weak/f1"),
          ("link P", "linking/strong/precision"), ("link R", "linking/strong/recall"),
          ("link F1", "linking/strong/f1"), ("(weak)", "linking/weak/f1")]
  head = f"{'mode':<32}" + "".join(f"{name:>11}" for name, _ in cols)
  lines = [head, "-" * len(head)]
  for mode, report in results.items():
    lines.append(f"{mode:<32}" + "".join(f"{report[key]:>11.3f}" for _, key in cols))
  return "\n".join(lines)


def excerpt(text: str, limit: int) -> tuple[str, bool]:
  """At most `limit` characters of `text`, cut after a whole word; and whether it was cut.

  The demo links the excerpt itself: a word cut in half would be linked as a broken name.
  """
  if len(text) <= limit:
    return text, False
  cut = text[:limit]
  if not text[limit].isspace() and len(cut.split()) > 1:
    cut = cut.rsplit(None, 1)[0]  # The limit falls inside a word: that word goes.
  return cut.rstrip(), True


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs the demo; returns {system: report on the test worlds}."""
  t0 = time.time()
  data = sources.load(config, workdir, documents=True)
  test = data.evals["test"]
  test_entities = data.entities_for(test)
  logging.info("Catalogue: %d entities (%d in the unseen test worlds); %d train, "
               "%d test mentions.", len(data.entities), len(test_entities),
               len(data.train), len(test))
  k = int(config.cross.k)

  tok = load_lib.tokenizer(config.tokenizer)
  rows = {"bi-encoder (untrained)": evaluate.biencoder_report(
      load_lib.build("biencoder", config), tok, test_entities, test, config, normalize_k=k)}
  stages = pipeline.run(config, workdir, data)
  trained, cross = stages["biencoder"], stages["crossencoder"]
  distilled, linked = stages["distill"], stages["linker"]
  bm25 = trained["baselines"]["test"].get("BM25") or evaluate.recall_report(
      evaluate.bm25_ranking(test_entities, test, config.candidates.k,
                            window=config.retrieval.window), test,
      list(config.eval.ks), normalize_k=k)
  rows = {"BM25": bm25, **rows,
          "bi-encoder": trained["metrics"]["test"],
          "bi-encoder + cross-encoder": cross["metrics"]["test"],
          "distilled bi-encoder": distilled["metrics"]["test"]}

  # R@1, R@k (what the cross-encoder sees) and R@64 (candidates.k), where
  # config.eval.ks has them.
  ks = [x for x in sorted({1, k, int(config.candidates.k)})
        if all(f"macro/recall@{x}" in r for r in rows.values())]
  writer = metric_writer.MetricWriter(workdir)
  for name, report in rows.items():
    writer.results(f"test/{name}", report)
  writer.close()
  print(f"\nZero-shot linking on {len(set(test.worlds))} unseen worlds "
        f"({len(test)} mentions, macro-averaged over worlds; the cross-encoder "
        f"re-ranks the bi-encoder's top {k}, normalized accuracy is over the mentions "
        f"whose gold is in a system's top {k}):")
  print(format_table(rows, ks))
  docs = data.eval_documents["test"]
  print(f"\nEnd to end on the {len(docs)} test documents (spans found by the linker; "
        "strong = exact span, weak = overlap):")
  print(format_linking({f"linker, {name.split('/')[1]} mode": r
                        for name, r in linked["metrics"].items() if name.startswith("test/")}))
  example, cut = excerpt(docs[0].text, 300)
  print(f"\nLinked: {linked['linker'].render(example)}{' ...' if cut else ''}")
  print(f"\n[{time.time() - t0:.0f}s] metrics in {os.path.join(workdir, 'metrics.json')}")
  return rows
