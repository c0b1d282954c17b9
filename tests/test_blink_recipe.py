"""configs/zeshel.py:blink, BLINK's code where the default recipe departs from it."""

import json
import os

import jax
import numpy as np
from flax import nnx

from blink_jax.inference import load as load_lib
from blink_jax.stages import pipeline
from configs import zeshel
from conftest import chain_config

SWITCHES = ("optim.frozen", "hard_negatives.loss", "cross.model.pooling",
            "cross.optim.frozen", "distill.optim.frozen")


def _get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


def test_the_blink_variant_sets_exactly_the_switches():
  default, blink = zeshel.get_config(), zeshel.get_config("blink")
  flat = lambda c: {k: v for k, v in _flatten(c.to_dict()).items()}
  differ = {k for k, v in flat(blink).items() if flat(default)[k] != v}
  assert differ == set(SWITCHES), differ
  assert blink.optim.frozen == ("embeddings",)
  assert blink.cross.optim.frozen == ("embeddings", "pooler")


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_the_blink_switches_train_the_chain_as_blink_does(tmp_path):
  # The runlocal chain (random-init towers, mined hard negatives) under the :blink
  # switches: embeddings (and the cross-encoder's pooler) end as they started, the
  # hard negatives' separate loss is logged, and the cross-encoder scores the pooler.
  config = chain_config()
  config.train.num_epochs = 2  # Hard negatives from epoch 1.
  blink = zeshel.get_config("blink")
  for key in SWITCHES:
    head, _, last = key.rpartition(".")
    _get(config, head)[last] = _get(blink, key)
  config.pipeline.stages = ("biencoder", "crossencoder")
  workdir = str(tmp_path)
  pipeline.run(config, workdir)

  def params(model):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}

  for stage in ("biencoder", "crossencoder"):
    trained = params(load_lib.load(workdir, stage).model)
    start = params(load_lib.build(stage, config))
    frozen = [k for k in start if "'embeddings'" in k or "'pooler'" in k]
    assert frozen, stage
    for k in start:
      same = np.array_equal(trained[k], start[k])
      assert same == (k in frozen), (stage, k)
  assert load_lib.load(workdir, "crossencoder").model.encoder.pooler is not None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  binary = [r["train/binary_loss"] for r in rows if "train/binary_loss" in r]
  assert binary and all(np.isfinite(binary))
