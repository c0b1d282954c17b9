"""BERT encoder in Flax NNX, numerically matching Hugging Face's `BertModel`.

Every tower in blink_jax (context, entity, cross-encoder, mention detection)
is this encoder. It is post-LayerNorm BERT with exact (erf) GELU, so that
weights imported from a PyTorch checkpoint (see `bert_checkpoint.py`) give
the same hidden states as `transformers.BertModel`.

Speed choices (CPU and accelerators alike):
  * Q, K and V are one fused `[hidden, 3*hidden]` projection: one large matmul
    instead of three small ones.
  * Attention goes through `jax.nn.dot_product_attention`, which lowers to the
    fused kernels (cuDNN flash attention on GPU) where they exist. Attention
    dropout cannot be expressed there, so training with attention dropout > 0
    takes the explicit softmax path.

Dtype policy: parameters are stored in `param_dtype` (float32); matmuls run in
`dtype` (float32, or bfloat16 on accelerators); LayerNorm statistics and the
attention softmax are computed in float32 whatever `dtype` is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Shape and numerics of one BERT encoder."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "float32"        # Compute dtype of the matmuls.
  param_dtype: str = "float32"  # Storage dtype of the parameters.
  # "fused": jax.nn.dot_product_attention (cuDNN flash attention on GPU).
  # "chunked": explicit softmax attention looped over `attention_chunk`
  #   sequences at a time, so that each chunk's [heads, T, T] scores stay in
  #   cache (3.5x faster than "fused" on CPU, see SelfAttention).
  # "auto": "chunked" on CPU, "fused" elsewhere.
  attention: str = "auto"
  attention_chunk: int = 4      # Sequences per step of "chunked" attention.
  # BERT's pooler (dense + tanh over [CLS], trained by next-sentence prediction and
  # imported from the checkpoint): BLINK's cross-encoder scores it (pooling="pooler").
  pooler: bool = False

  def __post_init__(self):
    if self.attention not in ("auto", "fused", "chunked"):
      raise ValueError(f"attention={self.attention!r}; expected 'auto', "
                       "'fused' or 'chunked'.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads "
          f"{self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf_config(cls, path_or_dict: str | os.PathLike | dict[str, Any],
                     **overrides) -> "BertConfig":
    """Reads a Hugging Face `config.json` (file, directory or parsed dict)."""
    if isinstance(path_or_dict, dict):
      hf = path_or_dict
    else:
      path = os.fspath(path_or_dict)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      with open(path, encoding="utf-8") as f:
        hf = json.load(f)
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
      raise ValueError(f"hidden_act={act!r} is not supported; only the exact "
                       "'gelu' of BERT is implemented.")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError("Only absolute position embeddings are supported, got "
                       f"{hf['position_embedding_type']!r}.")
    kwargs = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    kwargs.update(overrides)
    return cls(**kwargs)


class BertOutput(NamedTuple):
  sequence: Array  # [batch, length, hidden]: last layer, every token.
  cls: Array       # [batch, hidden]: the [CLS] token's last hidden state.
  pooled: Array | None = None  # [batch, hidden]: tanh(pooler(cls)), with cfg.pooler.


@jax.custom_vjp
def _matmul(x: Array, w: Array) -> Array:
  """x @ w over x's last axis, with a backward pass laid out for XLA:CPU."""
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, w):
  return _matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))  # g @ w.T
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  # dW = x^T g contracts over the tokens, the leading axis of both. XLA:CPU
  # runs that as an Eigen GEMM on transposed operands (after transposing g
  # itself, 25 MB for the FFN), beside and competing with the YNNPACK
  # matmuls. Transposing the narrower operand explicitly (the barrier stops
  # XLA from folding the transpose back into the dot) turns it into a plain
  # row-major GEMM that YNNPACK takes: -7% on a MiniLM training step.
  barrier = jax.lax.optimization_barrier
  if x2.shape[1] <= g2.shape[1]:
    dw = barrier(x2.T) @ g2
  else:
    dw = (barrier(g2.T) @ x2).T
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                       preferred_element_type=None, out_sharding=None):
  """`nnx.Linear`'s dot_general: `_matmul` on CPU, lax.dot_general elsewhere.

  Accelerator compilers take transposed operands natively, where a forced
  transpose would only cost memory traffic.
  """
  plain = (dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ()))
           and rhs.ndim == 2 and precision is None
           and preferred_element_type is None and out_sharding is None)
  if plain and jax.default_backend() == "cpu":
    return _matmul(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type,
                             out_sharding=out_sharding)


def _dense(cfg: BertConfig, din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      din, dout, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
      kernel_init=nnx.initializers.truncated_normal(cfg.initializer_range),
      dot_general=_dense_dot_general, rngs=rngs)


def _layer_norm(cfg: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Computed in float32 even under a bfloat16 policy: BERT's eps of 1e-12 and
  # its residual stream need the range.
  return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps,
                       dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype),
                       rngs=rngs)


class Dropout(nnx.Dropout):
  """`nnx.Dropout` that draws two 16-bit uniforms from each 32-bit random word.

  Same module, RNG stream and `deterministic` / `model.eval()` behaviour as
  `nnx.Dropout`; only the mask is drawn differently. `nnx.Dropout` hashes one
  threefry word per element, and on CPU threefry runs as a rolled loop over
  the whole array: the masks took 0.45 s of a 1.26 s training forward pass
  (MiniLM, 32 x 128). Splitting each word into two 16-bit draws halves the
  hashing and cut that forward to 0.98 s. An element is dropped when its
  draw is below round(rate * 2**16), i.e. with probability rate +- 8e-6.
  """

  def __call__(self, inputs: Array, *, deterministic: bool | None = None,
               rngs: nnx.Rngs | nnx.RngStream | Array | None = None) -> Array:
    deterministic = self.deterministic if deterministic is None else deterministic
    if (deterministic or self.rate == 0.0 or self.rate == 1.0
        or self.broadcast_dims or inputs.ndim == 0 or inputs.shape[-1] % 2):
      return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
    if rngs is None:
      rngs = self.rngs
    if isinstance(rngs, nnx.Rngs):
      key = rngs[self.rng_collection]()
    elif isinstance(rngs, nnx.RngStream):
      key = rngs()
    else:
      key = rngs
    shape = inputs.shape
    words = jax.random.bits(key, shape[:-1] + (shape[-1] // 2,), jnp.uint32)
    draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(shape)
    keep = draws >= jnp.uint16(round(self.rate * 2 ** 16))
    return jax.lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))


class Embeddings(nnx.Module):
  """Token + position + segment embeddings, LayerNorm, dropout."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    init = nnx.initializers.truncated_normal(cfg.initializer_range)
    pd = jnp.dtype(cfg.param_dtype)
    self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=pd,
                          embedding_init=init, rngs=rngs)
    self.position = nnx.Embed(cfg.max_position, cfg.hidden_size, param_dtype=pd,
                              embedding_init=init, rngs=rngs)
    self.segment = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size,
                             param_dtype=pd, embedding_init=init, rngs=rngs)
    self.norm = _layer_norm(cfg, rngs)
    self.dropout = Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, input_ids: Array, segment_ids: Array) -> Array:
    length = input_ids.shape[-1]
    x = (self.word(input_ids) + self.segment(segment_ids)
         + self.position.embedding[...][:length])
    return self.dropout(self.norm(x))


class SelfAttention(nnx.Module):
  """Multi-head self-attention with a fused QKV projection."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.qkv = _dense(cfg, cfg.hidden_size, 3 * cfg.hidden_size, rngs)
    self.out = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.attention_dropout = Dropout(cfg.attention_dropout, rngs=rngs)

  def __call__(self, x: Array, key_mask: Array) -> Array:
    """x: [B, T, H]; key_mask: [B, T] bool, False on padding keys."""
    cfg = self.cfg
    b, t, _ = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, cfg.num_heads, cfg.head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dropout = not (self.attention_dropout.deterministic
                   or cfg.attention_dropout == 0.0)
    impl = cfg.attention
    if impl == "auto":
      impl = "chunked" if jax.default_backend() == "cpu" else "fused"
    if impl == "chunked":
      ctx = self._chunked_attention(q, k, v, key_mask, dropout)
    elif not dropout:
      ctx = jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
    else:
      ctx = self._attention_with_dropout(q, k, v, key_mask[:, None, None, :])
    return self.out(ctx.reshape(b, t, cfg.hidden_size))

  def _chunked_attention(self, q, k, v, key_mask, dropout: bool) -> Array:
    """Softmax attention computed `attention_chunk` sequences at a time.

    Why, on CPU: XLA materialises the [B, heads, T, T] scores (25 MB per
    layer at B=32, T=128), then streams them through memory four times
    (mask, max, exp-sum, normalise) and once more for a transpose it adds
    before the probs @ V matmul; the batched [T, 32] x [32, T] matmuls also
    run far from peak. Looping over chunks of 4 sequences keeps each chunk's
    scores (3 MB) in cache: one attention layer drops from 52 ms to 15 ms
    on 2 cores, level with PyTorch's fused CPU flash-attention kernel.

    The layouts are picked so that both matmuls are plain row-major batched
    GEMMs with no transposed operand: q [.., T, D] @ k^T [.., D, T] and
    probs [.., T, T] @ v [.., T, D]; the head-major transposes that this needs
    fuse into the QKV bias add. Softmax normalisation is applied after the
    second matmul (to [T, D] instead of [T, T] values), which is exact up to
    rounding: (p / s) @ v == (p @ v) / s row by row. Dropout commutes with it
    for the same reason.
    """
    cfg = self.cfg
    b, t, n, d = q.shape
    # The largest chunk size <= attention_chunk that divides the batch; a
    # prime batch size falls back to one sequence per step (still 2.5x faster
    # than "fused" on CPU).
    c = max(i for i in range(1, min(cfg.attention_chunk, b) + 1) if b % i == 0)
    dtype = q.dtype
    # Head-major layouts. The 1/sqrt(d) scale goes on q ([B, T, H]) rather
    # than on the [B, heads, T, T] scores.
    q = (q * jnp.asarray(d ** -0.5, dtype)).transpose(0, 2, 1, 3)  # [B,N,T,D]
    k = k.transpose(0, 2, 3, 1)                                    # [B,N,D,T]
    v = v.transpose(0, 2, 1, 3)                                    # [B,N,T,D]
    chunks = lambda a: a.reshape(b // c, c, *a.shape[1:])
    xs = [chunks(q), chunks(k), chunks(v), chunks(key_mask)]
    if dropout:
      xs.append(jax.random.split(self.attention_dropout.rngs(), b // c))
    batch_dims = ((0, 1), (0, 1))

    def one_chunk(xs):
      q, k, v, key_mask, *key = xs
      logits = jax.lax.dot_general(q, k, (((3,), (2,)), batch_dims),
                                   preferred_element_type=jnp.float32)
      logits = jnp.where(key_mask[:, None, None, :], logits,
                         jnp.finfo(jnp.float32).min)
      # Max subtraction keeps exp in range; softmax is unchanged by it.
      probs = jnp.exp(logits - logits.max(-1, keepdims=True))
      denom = probs.sum(-1, keepdims=True)
      if key:
        probs = self.attention_dropout(probs, rngs=key[0])
      ctx = jax.lax.dot_general(probs.astype(dtype), v, (((3,), (2,)), batch_dims),
                                preferred_element_type=jnp.float32)
      return (ctx / denom).astype(dtype)

    ctx = jax.lax.map(one_chunk, tuple(xs))  # [B/c, c, N, T, D]
    return ctx.reshape(b, n, t, d).transpose(0, 2, 1, 3)

  def _attention_with_dropout(self, q, k, v, mask):
    logits = jnp.einsum("bqnd,bknd->bnqk", q, k,
                        preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(self.cfg.head_dim))
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = self.attention_dropout(jax.nn.softmax(logits, axis=-1))
    return jnp.einsum("bnqk,bknd->bqnd", probs.astype(v.dtype), v)


class Layer(nnx.Module):
  """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_norm = _layer_norm(cfg, rngs)
    self.ffn_in = _dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs)
    self.ffn_out = _dense(cfg, cfg.intermediate_size, cfg.hidden_size, rngs)
    self.ffn_norm = _layer_norm(cfg, rngs)
    self.dropout = Dropout(cfg.dropout, rngs=rngs)
    self.dtype = jnp.dtype(cfg.dtype)

  def __call__(self, x: Array, key_mask: Array) -> Array:
    h = self.dropout(self.attention(x.astype(self.dtype), key_mask))
    x = self.attention_norm(x + h)
    # Exact GELU through erfc, as jax.nn.gelu computes it. The algebraically
    # equal x/2 * (1 + erf(x/sqrt2)) is 3x faster on its own, but XLA:CPU then
    # pulls erf, both FFN matmuls and the LayerNorm into one YNNPACK fusion
    # that runs the whole model 12% slower (811 vs 714 ms per batch).
    h = jax.nn.gelu(self.ffn_in(x.astype(self.dtype)), approximate=False)
    h = self.dropout(self.ffn_out(h))
    return self.ffn_norm(x + h)


class Bert(nnx.Module):
  """The encoder: embeddings and `num_layers` transformer layers."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.pooler = _dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs) if cfg.pooler else None

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               segment_ids: Array | None = None) -> BertOutput:
    """Encodes a batch.

    Args:
      input_ids: [B, T] int token ids.
      attention_mask: [B, T], nonzero on real tokens; defaults to
        `input_ids != 0` ([PAD] is id 0 in every BERT vocabulary).
      segment_ids: [B, T] token type ids; defaults to zeros.
    """
    if attention_mask is None:
      attention_mask = input_ids != 0
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    key_mask = attention_mask.astype(bool)
    x = self.embeddings(input_ids, segment_ids)
    for layer in self.layers:
      x = layer(x, key_mask)
    cls = x[:, 0]
    pooled = None if self.pooler is None else jnp.tanh(self.pooler(cls).astype(jnp.float32))
    return BertOutput(sequence=x, cls=cls, pooled=pooled)


def make_rngs(seed: int) -> nnx.Rngs:
  """The RNG streams of a model: `params` for init, `dropout` for training.

  The dropout stream must carry that name: trainers reseed it every step
  with `nnx.reseed(model, dropout=key)`, and a model built on a bare
  `nnx.Rngs(seed)` would keep its dropout on the `default` stream, which
  reseeding by name silently leaves alone (every step would then reuse the
  same masks).
  """
  return nnx.Rngs(params=seed, dropout=seed)
