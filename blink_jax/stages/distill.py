"""Stage "distill": the cross-encoder teaches the bi-encoder (Wu et al. 2020).

Reads: WORKDIR/biencoder (the student's start), WORKDIR/candidates,
WORKDIR/crossencoder (the teacher). Writes: WORKDIR/distill/{config.json,
checkpoints/, teacher/<set>/}. Reads top to bottom: mesh -> data, candidates
and teacher scores -> student
-> shard & transfer -> update step -> restore checkpoint -> train loop ->
evaluation. `train_and_evaluate(config, workdir)` is the entry point
(config.mode = "distill"); the pipeline calls it too.

The student starts from the trained bi-encoder and learns on each training
mention's top `distill.k` candidates (the stored lists the cross-encoder
re-ranks) with
    alpha * CE(gold) + (1 - alpha) * tau^2 * KL(softmax(t / tau) || softmax(s / tau)),
t the cross-encoder's scores, computed once and stored in
WORKDIR/distill/teacher/train/. As for the cross-encoder, mentions whose
gold was not retrieved are dropped. With `distill.train_entity_tower=False`
only the context tower learns: the catalogue's embeddings (and an index built
from them) stay valid, and a step reads the candidates' embeddings instead of
encoding them. The student's model is the bi-encoder's, as its stored config
describes it: this stage needs only its own flags.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

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
from blink_jax.inference import load as load_lib
from blink_jax.inference import rerank
from blink_jax.inference import retrieve
from blink_jax.stages import biencoder as biencoder_stage
from blink_jax.stages import candidates as candidates_lib

STAGE = "distill"


def fingerprint(config: ml_collections.ConfigDict, upstream: dict,
                data: sources.LinkingData) -> dict:
  """What a student checkpoint must agree on to be resumed under `config`, including
  the bi-encoder it started from and the cross-encoder that taught it."""
  d = config.distill
  return {"model": config.model.to_dict(), "tokenizer": config.tokenizer,
          "seed": config.seed, "data.max_context_len": config.data.max_context_len,
          "data.max_entity_len": config.data.max_entity_len,
          **data.train_identity(),
          "distill.k": d.k, "alpha": d.alpha, "temperature": d.temperature,
          "train_entity_tower": d.train_entity_tower,
          "num_mentions": d.get("num_mentions", 0),
          "distill.global_batch": d.train.global_batch,
          "optim": d.optim.to_dict(), "upstream": upstream}


def make_optimizer(config: ml_collections.ConfigDict, params, total_steps: int):
  tx, schedule = optim.make(config.distill.optim, total_steps)
  if not config.distill.train_entity_tower:
    tx = optim.freeze(tx, params, "entity_encoder")
  return tx, schedule


def make_loss_and_grads(fm: biencoder_stage.Functional, *, alpha: float,
                        temperature: float):
  """(params, batch, key) -> ((loss, metrics), grads) of the student.

  The batch holds B contexts, their K candidates (as tokens [B, K, Le], or as
  fixed embeddings [B, K, d] when the entity tower is frozen), the teacher's
  scores, gold and validity, all [B, K].
  """

  def loss_and_grads(params, batch, key):
    kq, ke = jax.random.split(key)

    def f(params):
      q = fm.embed(params, kq, "context", batch["context_ids"], batch["context_mask"], True)
      if "entity_emb" in batch:
        e = batch["entity_emb"]
      else:
        b, k, le = batch["entity_ids"].shape
        e = fm.embed(params, ke, "entity", batch["entity_ids"].reshape(b * k, le),
                     batch["entity_mask"].reshape(b * k, le), True).reshape(b, k, -1)
      scores = jnp.einsum("bd,bkd->bk", q, e, preferred_element_type=jnp.float32)
      return losses.distillation_loss(scores, batch["teacher"], batch["gold"],
                                      batch["valid"], alpha=alpha, temperature=temperature)

    return jax.value_and_grad(f, has_aux=True)(params)

  return loss_and_grads


class StudentBatches(pipeline.Inputs):
  """Contexts, candidates and teacher scores of training mentions, by row."""

  def __init__(self, tok, entities, mentions, candidate_ids, teacher, *,
               max_context_len: int, max_entity_len: int,
               entity_emb: np.ndarray | None = None):
    super().__init__(tok, entities, mentions, max_context_len=max_context_len,
                     max_entity_len=max_entity_len)
    self.candidate_ids = candidate_ids
    self.candidate_rows = entities.positions_of(candidate_ids.reshape(-1)).reshape(
        candidate_ids.shape)
    self.teacher = teacher
    self.entity_emb = entity_emb  # [E, d] by catalogue row, when frozen.

  def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    ctx = self.contexts(rows)
    ent_rows = self.candidate_rows[rows]
    valid = ent_rows >= 0
    safe = np.where(valid, ent_rows, 0)  # Padding: row 0, masked by `valid`.
    out = {"context_ids": ctx.ids, "context_mask": ctx.mask,
           "teacher": np.where(valid, self.teacher[rows], 0.0).astype(np.float32),
           "gold": ((self.candidate_ids[rows] == self.mentions.labels[rows][:, None])
                    & valid).astype(np.float32),
           "valid": valid}
    if self.entity_emb is not None:
      out["entity_emb"] = self.entity_emb[safe]
    else:
      ents = self.entity_batch(safe.reshape(-1))
      out["entity_ids"] = ents.ids.reshape(*safe.shape, -1)
      out["entity_mask"] = ents.mask.reshape(*safe.shape, -1)
    return out


def teacher_scores(workdir: str, teacher: load_lib.Trained, builder: pipeline.PairBuilder,
                   name: str, mesh: Mesh) -> np.ndarray:
  """The cross-encoder's scores of `builder`'s candidates, computed once and stored."""
  meta = {"crossencoder": teacher.identity,
          "candidates": workdir_lib.fingerprint_of(builder.candidate_ids,
                                                   builder.mentions.labels)}
  path = workdir_lib.teacher_path(workdir, name)
  stored = ckpt_lib.load_arrays(path, meta)
  if stored is not None:
    return stored["scores"]
  logging.info("Teacher: scoring %d mentions x %d candidates.", *builder.candidate_ids.shape)
  scores = rerank.score_candidates(
      teacher.model, builder, batch_size=teacher.config.cross.eval_batch_size, mesh=mesh,
      desc="teacher scores")
  ckpt_lib.save_arrays(path, {"scores": scores}, meta)
  return scores


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: sources.LinkingData | None = None) -> dict:
  """Distils the trained cross-encoder into the trained bi-encoder; evaluates it.

  Returns {"model": the student, "metrics": {eval set: recall report}}.
  """
  t_start = time.time()
  writer = metric_writer.MetricWriter(workdir)
  dc, tc = config.distill, config.distill.train
  k = int(dc.k)

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh"))

  # ------------------------------------- data, candidates, teacher scores
  # The student is the trained bi-encoder, described by its own stored config.
  student = load_lib.load(workdir, "biencoder", mesh)
  teacher = load_lib.load(workdir, "crossencoder", mesh)
  config = workdir_lib.inherit(config, student.config)
  workdir_lib.save_config(workdir, STAGE, config)
  tok = load_lib.tokenizer(config.tokenizer)
  data = data or sources.load(config, workdir)
  evals = evaluators.for_stage(evaluators.Context(config, data, tok, mesh, writer, STAGE))
  if not data.train:
    raise ValueError("Distillation needs training mentions (config.data).")
  cands = candidates_lib.for_sets(config, workdir, {"train": data.train},
                                  data.entities_for, mesh)["train"].top(k)
  kept = np.flatnonzero(cands.gold_positions() >= 0)  # Gold retrieved, as BLINK trains.
  if 0 < dc.get("num_mentions", 0) < len(kept):
    # A sample: the teacher scores only the mentions the student will see.
    rng = np.random.default_rng([config.seed, 1])
    kept = np.sort(rng.choice(kept, dc.num_mentions, replace=False))
  train = data.train.subset(kept)
  cand_ids = cands.ids[kept]
  dropped = int((cands.gold_positions() < 0).sum())
  logging.info("Distillation on %d training mentions (%d of %d dropped: gold not in "
               "the top %d).", len(kept), dropped, len(data.train), k)
  writer.results(f"{STAGE}/train_mentions", {
      "mentions": len(data.train), "trained_on": len(kept),
      "dropped_gold_not_in_top_k": dropped, "k": k})
  cc = teacher.config.cross
  teacher_tok = load_lib.tokenizer(teacher.config.tokenizer)
  scores = teacher_scores(workdir, teacher, pipeline.PairBuilder(
      teacher_tok, data.entities, train, cand_ids, max_context_len=cc.max_context_len,
      max_entity_len=cc.max_entity_len), "train", mesh)

  # ---------------------------------------------------------------- model
  fm, params = biencoder_stage.Functional.split(student.model)
  entity_emb = None
  if not dc.train_entity_tower:
    entity_emb = retrieve.catalogue(student.model, tok, data.entities, config, mesh,
                                    model_id=student.identity).embeddings
  batches = StudentBatches(tok, data.entities, train, cand_ids, scores,
                           max_context_len=config.data.max_context_len,
                           max_entity_len=config.data.max_entity_len, entity_emb=entity_emb)
  sampler = pipeline.StepSampler(len(train), tc.global_batch, config.seed)
  total_steps = tc.get("num_steps") or tc.num_epochs * sampler.steps_per_epoch
  my_rows = sharding.process_rows(mesh, tc.global_batch)
  tx, schedule = make_optimizer(config, params, total_steps)
  logging.info("Distillation: %d steps of %d mentions x %d candidates (alpha %.2f, "
               "tau %.1f, entity tower %s).", total_steps, tc.global_batch, k, dc.alpha,
               dc.temperature, "trained" if dc.train_entity_tower else "frozen")

  # ---------------------------------------------------- shard & transfer
  state, state_sh = trainer.create_state(params, tx, mesh)

  # ---------------------------------------------------------- update step
  train_step = trainer.compile_step(trainer.make_train_step(
      make_loss_and_grads(fm, alpha=dc.alpha, temperature=dc.temperature),
      tx, schedule, config.seed), state_sh, mesh)

  # --------------------------------------------------- restore checkpoint
  fp = fingerprint(config, {"biencoder": student.identity, "crossencoder": teacher.identity},
                   data)
  ckpt = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir, STAGE),
                               every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                               fingerprint=fp)
  state, _ = trainer.restore(ckpt, state, state_sh, what="distillation",
                             total_steps=total_steps)

  # ----------------------------------------------------------- train loop
  state = trainer.train_loop(
      state=state, train_step=train_step,
      loader=trainer.make_loader(lambda step: sampler.local_indices(step, my_rows), batches,
                                 config.get("input")),
      total_steps=total_steps, mesh=mesh, ckpt=ckpt, writer=writer,
      tag=f"{STAGE}/train", log_every=tc.get("log_every", 50),
      evaluate=evaluators.periodic(evals, config.eval.get("every", 0),
                                   lambda state: fm.module(state["params"])))
  model = fm.module(state["params"])

  # ----------------------------------------------------------- evaluation
  model_id = workdir_lib.identity(STAGE, total_steps, fp)
  results = evals["recall"].run(model, total_steps, model_id) if "recall" in evals else {}
  writer.close()
  logging.info("Distillation done in %.0fs.", time.time() - t_start)
  return {"model": model, "metrics": results}
