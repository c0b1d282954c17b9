"""Stage "crossencoder": BLINK's second stage, trained on the stored candidates.

Reads: WORKDIR/candidates (made by WORKDIR/biencoder). Writes:
WORKDIR/crossencoder/{config.json, checkpoints/}. Reads top to bottom: mesh -> data & candidates -> model -> shard & transfer
-> update step -> restore checkpoint -> train loop -> evaluation.
`train_and_evaluate(config, workdir)` is the entry point
(config.mode = "train_crossencoder"); the pipeline calls it too.

Candidates are each mention's top `cross.k` entities by the trained
bi-encoder (`stages/candidates.py`: retrieved once and stored).
The loss is a softmax over them. Training mentions whose gold entity is not
among them are dropped, as in BLINK; how many is logged and written to
metrics.json. Evaluation reports, per world with macro and micro averages:
normalized accuracy (over mentions whose gold was retrieved), unnormalized
accuracy (over all mentions) and the candidates' recall@k.

A global batch of B mentions is B * K pair rows split evenly over every
device and host, so one mention's K candidates may span devices; the loss
reshapes the scores to [B, K] under jit and XLA gathers what it needs.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import logging

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
from blink_jax.data.jsonl import Mention
from blink_jax.data.records import Records
from blink_jax.inference import load as load_lib
from blink_jax.inference import retrieve
from blink_jax.stages import candidates as candidates_lib

STAGE = "crossencoder"  # Sub-directory of the workdir, and metrics prefix.


def fingerprint(config: ml_collections.ConfigDict, workdir: str,
                data: sources.LinkingData) -> dict:
  """What a cross-encoder checkpoint must agree on to be resumed under `config`,
  including the candidates (hence the bi-encoder) it was trained on."""
  c = config.cross
  return {"model": c.model.to_dict(), "tokenizer": config.tokenizer, "seed": config.seed,
          "k": c.k, "max_context_len": c.max_context_len,
          "max_entity_len": c.max_entity_len, "global_batch": c.train.global_batch,
          "optim": c.optim.to_dict(),
          **data.train_identity(),
          "upstream": {"candidates": candidates_lib.identity(workdir, config)}}


def make_loss_and_grads(fm: trainer.Functional, k: int):
  """(params, batch of B*k pair rows, key) -> ((loss, metrics), grads)."""

  def loss_and_grads(params, batch, key):
    def f(params):
      scores = fm.apply(params, key)(batch["ids"], batch["mask"], batch["segment_ids"])
      return losses.candidate_loss(scores.reshape(-1, k), batch["gold"].reshape(-1, k),
                                   batch["valid"].reshape(-1, k))
    return jax.value_and_grad(f, has_aux=True)(params)

  return loss_and_grads


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: sources.LinkingData | None = None) -> dict:
  """Trains the cross-encoder on the bi-encoder's candidates; evaluates re-ranking.

  Needs a trained bi-encoder in `workdir`. Returns {"model", "metrics": {eval
  set: report of the re-ranked lists}, "candidates": {set: Candidates}}.
  """
  t_start = time.time()
  writer = metric_writer.MetricWriter(workdir)
  cc, tc = config.cross, config.cross.train
  k = int(cc.k)

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh"))
  if (tc.global_batch * k) % mesh.size:
    raise ValueError(f"cross.train.global_batch * cross.k = {tc.global_batch * k} pair "
                     f"rows must split evenly over the {mesh.size} devices.")

  # ------------------------------------------------ data and candidates
  tok = load_lib.tokenizer(config.tokenizer)
  data = data or sources.load(config, workdir)
  sets = {"train": data.train, **data.evals} if data.train else dict(data.evals)
  cands = candidates_lib.for_sets(config, workdir, sets, data.entities_for, mesh)
  evals = evaluators.for_stage(evaluators.Context(config, data, tok, mesh, writer, STAGE,
                                                  extra={"candidates": cands}))

  def pair_builder(mentions: Records[Mention], c: retrieve.Candidates):
    return pipeline.PairBuilder(tok, data.entities_for(mentions), mentions,
                                c.top(k).ids, max_context_len=cc.max_context_len,
                                max_entity_len=cc.max_entity_len)

  # ---------------------------------------------------------------- model
  workdir_lib.save_config(workdir, STAGE, config)
  fm, params = trainer.fresh_model(lambda: load_lib.build(STAGE, config), mesh,
                                   pretrained=bool(cc.model.get("init_from")))
  state = None
  if data.train:
    found = cands["train"].top(k).gold_positions() >= 0
    train_rows = np.flatnonzero(found)  # BLINK drops mentions whose gold was missed.
    stats = {"mentions": len(found), "trained_on": len(train_rows),
             "dropped_gold_not_in_top_k": int((~found).sum()), "k": k}
    logging.info("Cross-encoder: %d of %d training mentions have their gold in the "
                 "top %d; the other %d are dropped.", len(train_rows), len(found), k,
                 stats["dropped_gold_not_in_top_k"])
    writer.results(f"{STAGE}/train_mentions", stats)
    builder = pair_builder(data.train, cands["train"])
    sampler = pipeline.StepSampler(len(train_rows), tc.global_batch, config.seed)
    total_steps = tc.get("num_steps") or tc.num_epochs * sampler.steps_per_epoch
    my_rows = sharding.process_rows(mesh, tc.global_batch * k)
    logging.info("Cross-encoder: %d steps of %d mentions x %d candidates.", total_steps,
                 tc.global_batch, k)
    tx, schedule = optim.make(cc.optim, total_steps)

    # -------------------------------------------------- shard & transfer
    state, state_sh = trainer.create_state(params, tx, mesh)

    # -------------------------------------------------------- update step
    train_step = trainer.compile_step(
        trainer.make_train_step(make_loss_and_grads(fm, k), tx, schedule, config.seed),
        state_sh, mesh)

    # ------------------------------------------------- restore checkpoint
    ckpt = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir, STAGE),
                                 every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                                 fingerprint=fingerprint(config, workdir, data))
    state, _ = trainer.restore(ckpt, state, state_sh, what="cross-encoder",
                               total_steps=total_steps)

    # --------------------------------------------------------- train loop
    # Each process tokenizes its own pair rows of the step's global mentions.
    loader = trainer.make_loader(lambda step: train_rows[sampler.global_indices(step)],
                                 lambda rows: builder(rows, my_rows), config.get("input"))
    state = trainer.train_loop(
        state=state, train_step=train_step, loader=loader, total_steps=total_steps,
        mesh=mesh, ckpt=ckpt, writer=writer, tag=f"{STAGE}/train",
        log_every=tc.get("log_every", 50),
        evaluate=evaluators.periodic(evals, config.eval.get("every", 0),
                                     lambda state: fm.module(state["params"])))
    params = state["params"]
  model = fm.module(params)

  # ----------------------------------------------------------- evaluation
  step = int(state["step"]) if state is not None else 0
  results = evals["rerank"].run(model, step) if "rerank" in evals else {}
  writer.close()
  logging.info("Cross-encoder done in %.0fs.", time.time() - t_start)
  return {"model": model, "metrics": results, "candidates": cands}
