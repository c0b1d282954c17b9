"""Why zero-shot MiniLM retrieves poorly through blink_jax: one input difference at a time.

all-MiniLM-L6-v2 was trained as a sentence encoder: plain text in, mean-pooled
and L2-normalised out, compared by cosine. BLINK's layout differs from that in
three ways: mention markers ([unused0] / [unused1], untrained in MiniLM), the
entity separator ([unused2]), and dot products of unnormalised vectors. This
script embeds the wikiel catalogue and dev mentions with the untrained model
under each variant and prints one JSON line: R@1 / R@64 per dev set (the
in-catalogue mentions; nothing is trained, so every set may be reported).

  python bench/zero_shot_inputs.py [--wikiel_dir=../shared/data/wikiel] [--sets=KORE50]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from blink_jax.data import jsonl  # pylint: disable=g-import-not-at-top
from blink_jax.data import wikipedia
from blink_jax.inference import encode
from blink_jax.inference import load as load_lib
from blink_jax.tokenization import TokenBatch
from configs import wikipedia as wiki_config


def _drop_tokens(batch: TokenBatch, drop: set[int]) -> TokenBatch:
  """The same rows without the tokens in `drop` (left-aligned, re-masked)."""
  ids = np.zeros_like(batch.ids)
  mask = np.zeros_like(batch.mask)
  for i in range(len(ids)):
    kept = [t for t, m in zip(batch.ids[i], batch.mask[i]) if m and t not in drop]
    ids[i, :len(kept)] = kept
    mask[i, :len(kept)] = 1
  return TokenBatch(ids=ids, mask=mask, segment_ids=np.zeros_like(ids),
                    offsets=batch.offsets)


def _recall(q, e, labels, gold, ks=(1, 64)):
  scores = q @ e.T
  top = np.argsort(-scores, axis=1)[:, :max(ks)]
  hit = labels[top] == gold[:, None]
  return {f"R@{k}": round(float(hit[:, :k].any(1).mean()), 3) for k in ks}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--wikiel_dir", default=os.path.join(REPO, "..", "shared", "data", "wikiel"))
  p.add_argument("--sets", default=",".join(wikipedia.DEV_SETS))
  args = p.parse_args()
  wikipedia.check_wikiel_dir(args.wikiel_dir)
  config = wiki_config.get_config()
  tok = load_lib.tokenizer(config.tokenizer)
  model = load_lib.build("biencoder", config)  # MiniLM as released: nothing trained.
  entities = jsonl.open_entities(os.path.join(args.wikiel_dir, "entities.jsonl"))
  ids = set(entities.labels.tolist())
  n_ent, ent_len, ctx_len = len(entities), config.data.max_entity_len, config.data.max_context_len
  bs = config.eval.batch_size
  markers = {tok.mention_start_id, tok.mention_end_id}
  t0 = time.time()

  def ents(fmt):
    def tokenize(rows):
      recs = entities.take(rows)
      if fmt == "blink":  # [CLS] title [unused2] description [SEP]
        return tok.entities(recs, ent_len)
      return tok.encode_texts([f"{e.title}. {e.text}" for e in recs], ent_len)
    return encode.encode(model.entity_encoder, tokenize, n_ent, batch_size=bs,
                         desc=f"entities ({fmt})")

  def ments(mentions, fmt):
    def tokenize(rows):
      recs = mentions.take(rows)
      if fmt == "blink":
        return tok.mentions(recs, ctx_len)
      if fmt == "no markers":
        return _drop_tokens(tok.mentions(recs, ctx_len + 2), markers)
      return tok.encode_texts([m.mention for m in recs], ctx_len)  # "mention only"
    return encode.encode(model.context_encoder, tokenize, len(mentions), batch_size=bs,
                         desc=f"mentions ({fmt})")

  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  catalogues = {fmt: ents(fmt) for fmt in ("blink", "plain")}
  out = {}
  for name in args.sets.split(","):
    mentions = jsonl.open_mentions(os.path.join(args.wikiel_dir, f"{name}.mentions.jsonl"),
                                   catalogue_ids=ids)
    keep = np.flatnonzero(mentions.labels >= 0)
    gold = mentions.labels[keep]
    for m_fmt in ("blink", "no markers", "mention only"):
      q = ments(mentions, m_fmt)[keep]
      for e_fmt, e in catalogues.items():
        out[f"{name} | mention {m_fmt} | entity {e_fmt} | dot"] = _recall(q, e, entities.labels,
                                                                          gold)
        out[f"{name} | mention {m_fmt} | entity {e_fmt} | cosine"] = _recall(
            unit(q), unit(e), entities.labels, gold)
  print(json.dumps({"bench": "zero_shot_inputs", "seconds": round(time.time() - t0),
                    "results": out}))


if __name__ == "__main__":
  main()
