"""Stage "biencoder": global in-batch negatives, hard negatives, resume.

Reads: the data. Writes: WORKDIR/biencoder/{config.json, checkpoints/}.
Reads top to bottom: mesh -> data -> model -> shard & transfer -> update step
-> restore checkpoint -> evaluators -> train loop (with hard-negative mining at
epoch boundaries) -> final evaluation. `train_and_evaluate(config, workdir)` is
the entry point (config.mode = "train_biencoder"); the pipeline calls it too.

Negative pools beyond memory: with `train.grad_cache_chunks` = C > 1 the step
uses gradient caching (Gao et al. 2021). It embeds the global batch in C
chunks without keeping activations, computes the loss and its gradient with
respect to the embeddings (cheap: [B, d] arrays), then re-runs each chunk
under `jax.vjp` and pulls that gradient back into the parameters. Activation
memory is that of one chunk, whatever the number of negatives, and the loss
and gradients equal the direct computation's (tested).
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from blink_jax import checkpoint as ckpt_lib
from blink_jax import evaluators
from blink_jax import losses
from blink_jax import metric_writer
from blink_jax import optim
from blink_jax import sharding
from blink_jax import trainer
from blink_jax import workdir as workdir_lib
from blink_jax.data import pipeline
from blink_jax.data import sources
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import load as load_lib
from blink_jax.inference import retrieve

STAGE = "biencoder"


# ------------------------------------------------------------------ the model
class Functional(trainer.Functional):
  """A bi-encoder as pure functions of its parameters."""

  def embed(self, params, key, tower: str, ids, mask, train: bool):
    model = self.apply(params, key if train else None)
    fn = model.embed_context if tower == "context" else model.embed_entities
    return fn(ids, mask)


def _to_chunks(x, c: int):
  # Chunk j takes rows j, j + c, j + 2c, ...: each device's contiguous block of
  # rows feeds every chunk equally, so chunking moves no data between devices.
  return x.reshape(x.shape[0] // c, c, *x.shape[1:]).swapaxes(0, 1)


def _from_chunks(x):
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def make_loss_and_grads(fm: Functional, chunks: int, mesh=None,
                        hard_negative_loss: str = "softmax") -> Callable:
  """(params, batch, key) -> ((loss, metrics), grads), direct or grad-cached."""

  def constrain(x):
    if mesh is None:
      return x
    spec = P(None, sharding.BATCH_AXES) if x.ndim > 1 else P()
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

  def flat_entities(batch):
    le = batch["entity_ids"].shape[-1]
    return batch["entity_ids"].reshape(-1, le), batch["entity_mask"].reshape(-1, le)

  def loss_of_embeddings(q, e, batch):
    group = batch["entity_ids"].shape[1]  # 1 gold + H hard negatives per mention.
    pos_cols = jnp.arange(q.shape[0]) * group
    return losses.in_batch_loss(q, e, batch["labels"],
                                batch["entity_labels"].reshape(-1), pos_cols, group=group,
                                hard_negative_loss=hard_negative_loss)

  def direct(params, batch, key):
    kq, ke = jax.random.split(key)
    e_ids, e_mask = flat_entities(batch)

    def f(params):
      q = fm.embed(params, kq, "context", batch["context_ids"], batch["context_mask"], True)
      e = fm.embed(params, ke, "entity", e_ids, e_mask, True)
      return loss_of_embeddings(q, e, batch)

    return jax.value_and_grad(f, has_aux=True)(params)

  def cached(params, batch, key):
    kq, ke = jax.random.split(key)
    e_ids, e_mask = flat_entities(batch)
    towers = (("context", kq, batch["context_ids"], batch["context_mask"]),
              ("entity", ke, e_ids, e_mask))

    def chunk_inputs(key, ids, mask):
      return (jax.random.split(key, chunks), constrain(_to_chunks(ids, chunks)),
              constrain(_to_chunks(mask, chunks)))

    # 1. Embeddings of the whole batch, chunk by chunk, no activations kept.
    embs = []
    for tower, key_t, ids, mask in towers:
      keys, ids_c, mask_c = chunk_inputs(key_t, ids, mask)
      out = jax.lax.map(
          lambda a, tower=tower: fm.embed(params, a[0], tower, a[1], a[2], True),
          (keys, ids_c, mask_c))
      embs.append(_from_chunks(out))
    # 2. The loss and its gradient with respect to the embeddings.
    (loss, metrics), emb_grads = jax.value_and_grad(
        lambda q, e: loss_of_embeddings(q, e, batch), argnums=(0, 1),
        has_aux=True)(*embs)
    # 3. Re-run each chunk and pull the embedding gradient into the params.
    grads = jax.tree.map(jnp.zeros_like, params)
    for (tower, key_t, ids, mask), g in zip(towers, emb_grads):
      keys, ids_c, mask_c = chunk_inputs(key_t, ids, mask)

      def body(acc, a, tower=tower):
        k, i, m, g_chunk = a
        _, vjp = jax.vjp(lambda p: fm.embed(p, k, tower, i, m, True), params)
        return jax.tree.map(jnp.add, acc, vjp(g_chunk)[0]), None

      grads, _ = jax.lax.scan(body, grads, (keys, ids_c, mask_c,
                                            constrain(_to_chunks(g, chunks))))
    return (loss, metrics), grads

  return direct if chunks <= 1 else cached


# --------------------------------------------------------------- train state
def make_train_step(fm: Functional, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, chunks: int, seed: int, mesh=None,
                    hard_negative_loss: str = "softmax"):
  """One update: (state, batch) -> (state, metrics). Pure; jit it."""
  return trainer.make_train_step(make_loss_and_grads(fm, chunks, mesh, hard_negative_loss),
                                 tx, schedule, seed)


def fingerprint(config: ml_collections.ConfigDict, data: sources.LinkingData) -> dict:
  """What a checkpoint must agree on to be resumed under `config`: the model,
  its inputs, the training data and the optimizer. The step count is not in it:
  a run may be extended (its identity's step changes), never shortened."""
  return {"model": config.model.to_dict(), "tokenizer": config.tokenizer,
          "seed": config.seed,
          "data.max_context_len": config.data.max_context_len,
          "data.max_entity_len": config.data.max_entity_len,
          **data.train_identity(),
          "data.entities": workdir_lib.fingerprint_of(data.entities.labels),
          "train.global_batch": config.train.global_batch,
          "optim": config.optim.to_dict(),
          "hard_negatives": config.hard_negatives.to_dict(),
          # Hybrid mining fuses as config.retrieval says.
          **({"retrieval": config.retrieval.to_dict()}
             if config.hard_negatives.get("hybrid", False) else {})}


def hard_negatives(model, tok, entities: Records[Entity], mentions: Records[Mention],
                   num: int, config, mesh=None) -> np.ndarray:
  """The `num` highest-scoring wrong entities of each mention, within its world.

  Returns [N, num] rows into `entities`, -1 where a world has too few.
  """
  dense = retrieve.Catalogue(model, tok, entities, config, mesh)
  hybrid = bool(config.hard_negatives.get("hybrid", False))
  ranked = retrieve.retriever(dense, config, hybrid=hybrid).retrieve(mentions, num + 1)
  return negatives_from_ranking(ranked.ids, entities, mentions, num)


def negatives_from_ranking(ranked: np.ndarray, entities: Records[Entity],
                           mentions: Records[Mention], num: int) -> np.ndarray:
  """The first `num` non-gold entity ids of each ranking, as rows into `entities`."""
  wrong = (ranked >= 0) & (ranked != mentions.labels[:, None])
  # Stable sort of "is not wrong" moves the wrong ids to the front, in rank order.
  order = np.argsort(~wrong, axis=1, kind="stable")[:, :num]
  keep = np.take_along_axis(wrong, order, axis=1)
  rows = entities.positions_of(np.take_along_axis(ranked, order, axis=1))
  return np.where(keep, rows, -1)


# ------------------------------------------------------------- the trainer
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: sources.LinkingData | None = None) -> dict:
  """Trains the bi-encoder of `config` in `workdir`, resuming if possible.

  Returns {"model": the trained BiEncoder, "metrics": {eval set: recall
  report}, "baselines": {eval set: {"BM25": recall report}}}.
  """
  t_start = time.time()
  writer = metric_writer.MetricWriter(workdir)

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh"))
  logging.info("Mesh: %s", dict(mesh.shape))

  # ------------------------------------------------------- input pipeline
  tok = load_lib.tokenizer(config.tokenizer)
  data = data or sources.load(config, workdir)
  builder = pipeline.BatchBuilder(
      tok, data.entities, data.train, max_context_len=config.data.max_context_len,
      max_entity_len=config.data.max_entity_len)
  tc = config.train
  evals = evaluators.for_stage(evaluators.Context(config, data, tok, mesh, writer, STAGE))
  if not data.train:
    logging.info("No training mentions: evaluating the initial model.")
    out = _final_eval(load_lib.build(STAGE, config), evals, 0, None, t_start)
    writer.close()
    return out
  sampler = pipeline.StepSampler(len(data.train), tc.global_batch, config.seed)
  my_rows = sharding.process_rows(mesh, tc.global_batch)  # This process's block.
  total_steps = tc.get("num_steps") or tc.num_epochs * sampler.steps_per_epoch
  logging.info("%d training mentions, %d entities: %d steps of %d (%d per epoch).",
               len(data.train), len(data.entities), total_steps, tc.global_batch,
               sampler.steps_per_epoch)

  # ---------------------------------------------------------------- model
  workdir_lib.save_config(workdir, STAGE, config)
  fm, params = trainer.fresh_model(lambda: load_lib.build(STAGE, config), mesh,
                                   pretrained=bool(config.model.get("init_from")),
                                   functional=Functional)
  tx, schedule = optim.make(config.optim, total_steps)

  # ---------------------------------------------------- shard & transfer
  state, state_sh = trainer.create_state(params, tx, mesh)

  # ---------------------------------------------------------- update step
  train_step = trainer.compile_step(
      make_train_step(fm, tx, schedule, tc.get("grad_cache_chunks", 1), config.seed, mesh,
                      config.hard_negatives.get("loss", "softmax")),
      state_sh, mesh)

  # --------------------------------------------------- restore checkpoint
  fp = fingerprint(config, data)
  ckpt = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir, STAGE),
                               every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                               fingerprint=fp)
  hn = config.hard_negatives
  mined = {"epoch": -1, "rows": None}  # rows: [N, H] catalogue rows of hard negatives.
  state, meta = trainer.restore(ckpt, state, state_sh, what="bi-encoder",
                                total_steps=total_steps)
  mined["epoch"] = meta.get("mined_epoch", -1)
  if meta.get("hard_negatives") is not None:
    mined["rows"] = meta["hard_negatives"].astype(np.int64)

  # ---------------------------------------------------------- train loop
  def before_step(step: int, state: dict):
    # Hard negatives are re-mined at each epoch start from `start_epoch` on
    # (and at once on a resume that finds none).
    epoch = sampler.epoch(step)
    if hn.num and epoch >= hn.start_epoch and mined["epoch"] != epoch and (
        step % sampler.steps_per_epoch == 0 or mined["rows"] is None):
      logging.info("Mining %d hard negatives per mention (epoch %d).", hn.num, epoch)
      mined["rows"] = hard_negatives(fm.module(state["params"]), tok, data.entities,
                                     data.train, hn.num, config, mesh)
      mined["epoch"] = epoch

  def tokenize(rows: np.ndarray):
    # Before the first mining there are no hard negatives: those steps encode
    # only the gold entities (a second compilation, but 1 + H times fewer
    # entity encodings in the early epochs).
    hard = mined["rows"]
    return builder(rows, None if hard is None else hard[rows])

  def mines_at(step: int) -> bool:
    # Batches at and after a mining step read the new negatives: the loader
    # builds none of them ahead of it.
    return bool(hn.num) and sampler.epoch(step) >= hn.start_epoch and (
        step % sampler.steps_per_epoch == 0)

  loader = trainer.make_loader(lambda step: sampler.local_indices(step, my_rows), tokenize,
                               config.get("input"), restart_at=mines_at)

  def meta():
    hard = mined["rows"]
    # An array item of the checkpoint, not JSON: [N, H] rows can be
    # hundreds of MB at Wikipedia scale.
    return {"mined_epoch": mined["epoch"],
            **({} if hard is None else {"hard_negatives": hard})}

  state = trainer.train_loop(
      state=state, train_step=train_step, loader=loader, total_steps=total_steps,
      mesh=mesh, ckpt=ckpt, writer=writer, tag="train", log_every=tc.get("log_every", 50),
      before_step=before_step, meta=meta,
      evaluate=evaluators.periodic(evals, config.eval.get("every", 0),
                                   lambda state: fm.module(state["params"])))

  # --------------------------------------------------------- final eval
  out = _final_eval(fm.module(state["params"]), evals, total_steps,
                    workdir_lib.identity(STAGE, total_steps, fp), t_start)
  writer.close()
  return out


def _final_eval(model, evals, step, model_id, t_start) -> dict:
  results = evals["recall"].run(model, step, model_id) if "recall" in evals else {}
  baselines = ({name: {"BM25": r} for name, r in evals["bm25"].run(model, step).items()}
               if "bm25" in evals else {})
  logging.info("Bi-encoder done in %.0fs.", time.time() - t_start)
  return {"model": model, "metrics": results, "baselines": baselines}
