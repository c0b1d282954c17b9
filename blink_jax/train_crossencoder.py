"""Cross-encoder training and re-ranking evaluation: BLINK's second stage.

Reads top to bottom: mesh -> data & candidates -> model -> shard & transfer
-> update step -> restore checkpoint -> train loop -> evaluation.
`train_and_evaluate(config, workdir)` is the entry point
(config.mode = "train_crossencoder"); the demo calls it too.

Candidates are each mention's top `cross.k` entities by the trained
bi-encoder (`candidates.py`: retrieved once through the index and stored).
The loss is a softmax over them. Training mentions whose gold entity is not
among them are dropped, as in BLINK; how many is logged and written to
metrics.json. Evaluation reports, per world with macro and micro averages:
normalized accuracy (over mentions whose gold was retrieved), unnormalized
accuracy (over all mentions) and the candidates' recall@k.

A global batch of B mentions is B * K pair rows split evenly over every
device and host, so one mention's K candidates may span devices; the loss
reshapes the scores to [B, K] under jit and XLA gathers what it needs.
Checkpoints go to WORKDIR/crossencoder/checkpoints.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from blink_jax import candidates as candidates_lib
from blink_jax import checkpoint as ckpt_lib
from blink_jax import evaluate
from blink_jax import losses
from blink_jax import metric_writer
from blink_jax import optim
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax import trainer
from blink_jax.data import pipeline
from blink_jax.data import sources
from blink_jax.data.jsonl import Mention
from blink_jax.data.records import Records
from blink_jax.models import bert_checkpoint
from blink_jax.models import crossencoder

STAGE = "crossencoder"  # Sub-directory of the workdir, and metrics prefix.


def stage_dir(workdir: str) -> str:
  return os.path.join(workdir, STAGE)


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What a cross-encoder checkpoint must agree on to be resumed under `config`."""
  c = config.cross
  return {"model": c.model.to_dict(), "tokenizer": config.tokenizer, "k": c.k,
          "max_context_len": c.max_context_len, "max_entity_len": c.max_entity_len,
          "global_batch": c.train.global_batch}


def make_loss_and_grads(fm: trainer.Functional, k: int):
  """(params, batch of B*k pair rows, key) -> ((loss, metrics), grads)."""

  def loss_and_grads(params, batch, key):
    def f(params):
      scores = fm.apply(params, key)(batch["ids"], batch["mask"], batch["segment_ids"])
      return losses.candidate_loss(scores.reshape(-1, k), batch["gold"].reshape(-1, k),
                                   batch["valid"].reshape(-1, k))
    return jax.value_and_grad(f, has_aux=True)(params)

  return loss_and_grads


def score_candidates(model: crossencoder.CrossEncoder, builder: pipeline.PairBuilder,
                     *, batch_size: int, mesh: Mesh | None = None,
                     desc: str = "re-ranking") -> np.ndarray:
  """Cross-encoder scores [N, K] of every mention with each of its candidates.

  Pair rows stream through `evaluate.encode`: split over devices and
  processes, each process tokenizing only its own. -inf where a candidate
  list is padding.
  """
  n, k = builder.candidate_ids.shape

  def tokenize(rows):
    return builder.pairs(rows // k, rows % k)[0]

  flat = evaluate.encode(model, tokenize, n * k, batch_size=batch_size, mesh=mesh,
                         desc=desc, inputs=("ids", "mask", "segment_ids"))
  scores = flat.reshape(n, k).astype(np.float32)
  return np.where(builder.candidate_ids >= 0, scores, -np.inf)


def rerank(cands: candidates_lib.Candidates, scores: np.ndarray) -> np.ndarray:
  """Entity ids re-ordered by `scores` [N, K], then the rest of the stored list.

  The first K ids are the re-ranked candidates (padding last); ids beyond K
  keep the bi-encoder's order, so recall@k past K is the retriever's.
  """
  k = scores.shape[1]
  order = np.argsort(-scores, axis=1, kind="stable")
  head = np.take_along_axis(cands.ids[:, :k], order, axis=1)
  return np.concatenate([head, cands.ids[:, k:]], axis=1)


def build(config: ml_collections.ConfigDict, tok: tokenization.Tokenizer
          ) -> crossencoder.CrossEncoder:
  return crossencoder.build(config.cross.model, vocab_size=tok.vocab_size,
                            seed=config.seed)


def load_trained(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh | None = None
                 ) -> tuple[crossencoder.CrossEncoder, int]:
  """The cross-encoder of the latest checkpoint in WORKDIR/crossencoder, and its step."""
  mesh = mesh or sharding.make_mesh(config.get("mesh"))
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  fm, params = trainer.Functional.split(build(config, tok))
  tx, _ = optim.make(config.cross.optim, 1)  # Only the state's shapes matter here.
  params, step = trainer.restore_params(stage_dir(workdir), params, tx, mesh,
                                        fingerprint(config), "cross-encoder")
  return fm.module(params), step


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
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  data = data or sources.load(config, workdir)
  sets = {"train": data.train, **data.evals} if data.train else dict(data.evals)
  cands = candidates_lib.for_sets(config, workdir, sets, data.entities_for, mesh)

  def pair_builder(mentions: Records[Mention], c: candidates_lib.Candidates):
    return pipeline.PairBuilder(tok, data.entities_for(mentions), mentions,
                                c.top(k).ids, max_context_len=cc.max_context_len,
                                max_entity_len=cc.max_entity_len)

  # ---------------------------------------------------------------- model
  fm, params = trainer.Functional.split(build(config, tok))
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
    ckpt = ckpt_lib.Checkpointer(stage_dir(workdir), every=tc.checkpoint_every,
                                 keep=tc.keep_checkpoints, fingerprint=fingerprint(config))
    state, _ = trainer.restore(ckpt, state, state_sh, what="cross-encoder",
                               total_steps=total_steps)

    # --------------------------------------------------------- train loop
    def batch(step: int):
      return builder(train_rows[sampler.global_indices(step)], my_rows)

    state = trainer.train_loop(
        state=state, train_step=train_step, batch=batch, total_steps=total_steps,
        mesh=mesh, ckpt=ckpt, writer=writer, tag=f"{STAGE}/train",
        log_every=tc.get("log_every", 50))
    params = state["params"]
  model = fm.module(params)

  # ----------------------------------------------------------- evaluation
  results = {}
  ks = sorted(set(config.eval.ks) | {k})
  for name, mentions in data.evals.items():
    c = cands[name]
    scores = score_candidates(model, pair_builder(mentions, c), mesh=mesh,
                              batch_size=cc.eval_batch_size, desc=f"re-ranking {name}")
    results[name] = evaluate.recall_report(rerank(c, scores), mentions, ks, normalize_k=k)
    writer.results(f"{name}/bi-encoder + cross-encoder", results[name],
                   int(state["step"]) if state is not None else 0)
    r = results[name]
    logging.info("%s cross-encoder (top %d): normalized acc %.3f, unnormalized acc %.3f, "
                 "candidate recall@%d %.3f (macro over worlds).", name, k,
                 r["macro/normalized_accuracy"], r["macro/unnormalized_accuracy"], k,
                 r[f"macro/recall@{k}"])
  writer.close()
  logging.info("Cross-encoder done in %.0fs.", time.time() - t_start)
  return {"model": model, "metrics": results, "candidates": cands}
