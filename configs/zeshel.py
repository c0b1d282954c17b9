"""BLINK's Zeshel bi-encoder recipe (Wu et al. 2020).

  python -m blink_jax.main --config=configs/zeshel.py:size=large --workdir=/shared/runs/zeshel \\
    --config.data.zeshel_dir=/data/zeshel

`data.zeshel_dir` is the unpacked Zeshel release (documents/, mentions/); it
is converted once into array_record files under `data.tfds_dir`. The encoder
starts from bert-{base,large}-uncased: a hub id, or point `model.init_from`
(and `tokenizer`) at a local copy on machines without internet.
Recipe: batch 128, 5 epochs, 128-token contexts and entities, lr 1e-5 with
10% warm-up, AdamW (decay 0.01); hard negatives (10 per mention, re-mined
every epoch from epoch 1) as in BLINK's second bi-encoder round.
Cross-encoder (--config.mode=train_crossencoder): the same BERT size over
the pair (128 + 128 tokens, i.e. at most 255), softmax over the bi-encoder's
top 64, 2 mentions x 64 candidates per step, 5 epochs, lr 2e-5.
Distillation (--config.mode=distill): the bi-encoder as student on the same
top 64, alpha 0.5, tau 2, both towers trained, 1 epoch, lr 1e-5.
Run the stages in that order on one workdir; each resumes from its
checkpoints and reuses the stored candidates and teacher scores.
`:blink` switches to BLINK's code where the default departs from it (frozen
embeddings, the pooler head, the separate hard-negative loss; README).
"""

import ml_collections

from blink_jax import config_utils
from configs import base

SIZES = {
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_utils.parse_arg(arg, size="base", runlocal=False, blink=False)
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}, got {arg.size!r}.")
  config = base.get_config()
  config.data.kind = "zeshel"
  config.model.init_from = f"bert-{arg.size}-uncased"
  config.tokenizer = config.model.init_from
  config.model.bert.update(SIZES[arg.size])
  config.model.pooling = "cls"
  config.data.max_context_len = 128
  config.data.max_entity_len = 128
  config.train.global_batch = 128
  config.train.num_epochs = 5
  config.train.checkpoint_every = 1000
  config.optim.learning_rate = 1e-5
  config.hard_negatives.num = 10
  config.hard_negatives.start_epoch = 1
  # On accelerators: bf16 matmuls, fp32 parameters and optimizer state.
  config.model.bert_overrides = dict(dtype="bfloat16")
  config.eval.batch_size = 256

  config.candidates.k = 64
  config.cross.k = 64
  config.cross.max_context_len = 128
  config.cross.max_entity_len = 128
  config.cross.model.init_from = config.model.init_from
  config.cross.model.bert.update(SIZES[arg.size])
  config.cross.model.pooling = "cls"
  config.cross.model.bert_overrides = dict(dtype="bfloat16")
  config.cross.train.global_batch = 2
  config.cross.train.num_epochs = 5
  config.cross.train.checkpoint_every = 2000
  config.cross.optim.learning_rate = 2e-5
  config.cross.eval_batch_size = 512
  config.distill.k = 64
  config.distill.alpha = 0.5
  config.distill.temperature = 2.0
  config.distill.train_entity_tower = True
  config.distill.train.global_batch = 32
  config.distill.train.num_epochs = 1
  config.distill.train.checkpoint_every = 1000
  config.distill.optim.learning_rate = 1e-5
  if arg.blink:
    # BLINK's code, exactly where the default recipe departs from it (README, "Train a
    # bi-encoder on Zeshel"): its optimizer takes the encoder layers only
    # (type_optimization=all_encoder_layers: embeddings, and the cross-encoder's
    # pooler, keep their pretrained values); its cross-encoder scores BERT's pooler
    # output (--add_linear); hard negatives get a separate sigmoid loss.
    config.optim.frozen = ("embeddings",)
    config.hard_negatives.loss = "binary"
    config.cross.model.pooling = "pooler"
    config.cross.optim.frozen = ("embeddings", "pooler")
    config.distill.optim.frozen = ("embeddings",)
  if arg.runlocal:
    config.train.global_batch = 8
    config.train.num_steps = 10
    config.model.bert_overrides = dict(dtype="float32")
    config.cross.model.bert_overrides = dict(dtype="float32")
    config.cross.k = config.distill.k = 8
    config.cross.train.num_steps = config.distill.train.num_steps = 10
  return config
