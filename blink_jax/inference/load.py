"""The one way to load a trained model, and the one tokenizer of a config.

    trained = load.load(workdir, "crossencoder")   # .model, .identity, .config

The model is built abstractly (`nnx.eval_shape`: no weights computed, the
Hugging Face checkpoint it started from never read again) from the config the
stage stored in its directory, and only its parameters are restored from
Orbax, straight into their shardings; the optimizer state stays on disk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from blink_jax import checkpoint as ckpt_lib
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax import workdir as workdir_lib
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder
from blink_jax.models import crossencoder
from blink_jax.models import mention_detection

TRAINED_STAGES = ("biencoder", "crossencoder", "distill", "linker")


@functools.lru_cache(maxsize=4)
def tokenizer(spec: str) -> tokenization.Tokenizer:
  """The tokenizer of a checkpoint spec (config.tokenizer), built once per process."""
  return tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(spec))


def build(stage: str, config: ml_collections.ConfigDict, *, pretrained: bool = True
          ) -> nnx.Module:
  """A fresh model of `stage` under `config` (pretrained weights where it starts from them)."""
  vocab = tokenizer(config.tokenizer).vocab_size
  if stage in ("biencoder", "distill"):
    return biencoder.build(config.model, vocab_size=vocab, seed=config.seed,
                           pretrained=pretrained)
  if stage == "crossencoder":
    return crossencoder.build(config.cross.model, vocab_size=vocab, seed=config.seed,
                              pretrained=pretrained)
  if stage == "linker":
    return mention_detection.build(config, vocab_size=vocab, pretrained=pretrained)
  raise ValueError(f"No model for stage {stage!r}; trained stages: {TRAINED_STAGES}.")


@dataclasses.dataclass
class Trained:
  """A stage's trained model, what identifies it, and the config it was trained with."""

  model: nnx.Module
  identity: dict
  config: ml_collections.ConfigDict


def identity(workdir: str, stage: str) -> dict | None:
  """The identity of a stage's latest checkpoint, or None when it has none."""
  meta = ckpt_lib.read_meta(workdir_lib.checkpoint_dir(workdir, stage))
  if meta is None:
    return None
  return workdir_lib.identity(stage, meta["step"], meta["fingerprint"])


def restore(make: Callable[[], nnx.Module], directory: str, mesh
            ) -> tuple[nnx.Module, dict[str, Any]]:
  """The module `make()` would build, with the parameters of `directory`'s latest checkpoint.

  `make` runs under `nnx.eval_shape`, so nothing is computed or read but the
  checkpoint's parameters.
  """
  graphdef, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  params = ckpt_lib.abstract(params, sharding.tree_shardings(mesh, params))
  params, meta = ckpt_lib.restore_params(directory, params)
  return nnx.merge(graphdef, params, jax.tree.map(_placeholder, rest)), meta


def _placeholder(x: jax.ShapeDtypeStruct) -> jax.Array:
  # Non-parameter state is dropout's RNG stream: unused in eval mode, and a
  # trainer reseeds it every step.
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    key = jax.random.key(0)
    return jax.random.split(key, x.shape) if x.shape else key
  return jnp.zeros(x.shape, x.dtype)


def load(workdir: str, stage: str, mesh=None) -> Trained:
  """The latest checkpoint of `stage` in `workdir`, as its stored config builds it."""
  config = workdir_lib.load_config(workdir, stage)
  mesh = mesh or sharding.make_mesh(config.get("mesh"))
  directory = workdir_lib.checkpoint_dir(workdir, stage)
  if not workdir_lib.has_checkpoint(workdir, stage):
    raise FileNotFoundError(f"No {stage} checkpoint in {directory}: train it first "
                            f"(--config.mode={workdir_lib.MODE_OF[stage]}).")
  model, meta = restore(lambda: build(stage, config, pretrained=False), directory, mesh)
  return Trained(model, workdir_lib.identity(stage, meta["step"], meta["fingerprint"]),
                 config)


def final_biencoder(workdir: str, mesh=None) -> Trained:
  """The bi-encoder a user gets: the distilled student if there is one, else the bi-encoder."""
  return load(workdir, workdir_lib.final_biencoder(workdir), mesh)
