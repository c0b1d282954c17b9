"""The demo: zero-shot retrieval on synthetic worlds, end to end on a CPU.

Generates (once) the synthetic Zeshel-style worlds into WORKDIR/data, then
evaluates on the unseen test worlds: BM25, and the bi-encoder before
training. Prints one table of recall@k and writes it to WORKDIR/metrics.json.
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
from blink_jax.data import jsonl
from blink_jax.data import synthetic
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Writes the synthetic worlds (unless already there); returns their paths."""
  data_dir = config.data.get("dir") or os.path.join(workdir, "data")
  cfg = synthetic.SyntheticConfig(**config.data.synthetic)
  return {k: os.fspath(v) for k, v in synthetic.ensure_written(cfg, data_dir).items()}


def dense_report(model: biencoder.BiEncoder, tok: tokenization.Tokenizer,
                 entities: Sequence[jsonl.Entity], mentions: Sequence[jsonl.Mention],
                 config: ml_collections.ConfigDict) -> dict:
  """Encodes catalogue and mentions with `model`; recall@k per world."""
  ks = list(config.eval.ks)
  ent_batch = tok.encode_entities([e.title for e in entities],
                                  [e.text for e in entities],
                                  config.data.max_entity_len)
  ctx_batch = tok.encode_mentions([m.context_left for m in mentions],
                                  [m.mention for m in mentions],
                                  [m.context_right for m in mentions],
                                  config.data.max_context_len)
  bs = config.eval.batch_size
  ent_emb = evaluate.encode(evaluate.tower_fn(model.entity_encoder), ent_batch,
                            batch_size=bs, desc="catalogue")
  ctx_emb = evaluate.encode(evaluate.tower_fn(model.context_encoder), ctx_batch,
                            batch_size=bs, desc="mentions")
  ranked = evaluate.dense_ranking(ctx_emb, ent_emb, entities, mentions, max(ks))
  return evaluate.recall_report(ranked, mentions, ks)


def format_table(rows: dict[str, dict], ks: Sequence[int]) -> str:
  """A fixed-width table of macro-averaged recall@k, one row per system."""
  head = f"{'system':<28}" + "".join(f"{'R@' + str(k):>8}" for k in ks)
  lines = [head, "-" * len(head)]
  for name, report in rows.items():
    lines.append(f"{name:<28}" + "".join(
        f"{report[f'macro/recall@{k}']:>8.3f}" for k in ks))
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs the demo; returns {system: recall report}."""
  t0 = time.time()
  writer = metric_writer.MetricWriter(workdir)
  paths = prepare_data(config, workdir)
  entities = jsonl.read_entities(paths["entities"])
  catalogue = {e.id for e in entities}
  test = jsonl.read_mentions(paths["test_mentions"], catalogue_ids=catalogue)
  test_worlds = {m.world for m in test}
  test_entities = [e for e in entities if e.world in test_worlds]
  logging.info("Catalogue: %d entities (%d in %d unseen test worlds); %d test "
               "mentions.", len(entities), len(test_entities), len(test_worlds),
               len(test))
  ks = list(config.eval.ks)

  rows = {"BM25": evaluate.recall_report(
      evaluate.bm25_ranking(test_entities, test, max(ks)), test, ks)}

  tok = tokenization.Tokenizer.from_pretrained(
      bert_checkpoint.resolve(config.tokenizer))
  model = biencoder.build(config.model, vocab_size=tok.vocab_size, seed=config.seed)
  rows["bi-encoder (untrained)"] = dense_report(model, tok, test_entities, test, config)

  for name, report in rows.items():
    writer.results(f"test/{name}", report)
  writer.close()
  print(f"\nZero-shot retrieval on {len(test_worlds)} unseen worlds "
        f"({len(test)} mentions, macro-averaged over worlds):")
  print(format_table(rows, ks))
  print(f"\n[{time.time() - t0:.0f}s] metrics in {os.path.join(workdir, 'metrics.json')}")
  return rows
