"""Stage "linker": mention detection trained jointly with linking (ELQ-style).

Reads: a bi-encoder (WORKDIR/distill if trained and at least as good on the
held-out documents' gold spans, else WORKDIR/biencoder; `choose_student`), and WORKDIR/crossencoder when there is one (to calibrate
full mode). Writes: WORKDIR/linker/{config.json, checkpoints/, index/,
calibration.json}. Reads top to bottom: mesh -> documents -> model -> linking
examples -> shard & transfer -> update step -> restore checkpoint -> train
loop -> calibration -> evaluation. `train_and_evaluate(config, workdir)` is
the entry point (config.mode = "train_linker"); the pipeline calls it too.

The model (`models/mention_detection.MentionLinker`) is the final bi-encoder
with a span head on its context tower. One step's loss is

    span BCE over B text windows + link_weight * softmax CE over k candidates
    of M gold spans (as BLINK mentions, read by the same context tower),

so detection and linking share, and jointly train, the context encoder. The
entity tower is frozen: the catalogue's embeddings are computed once, make
the index (WORKDIR/linker/index) and the candidates' side of the loss.
Spans come from training documents ({"text", "mentions": [...]}); gold spans
whose entity is not in the catalogue or not in the top k are dropped from the
linking loss and counted.

A fraction of the training documents is held out to calibrate the mention
and NIL thresholds (`inference/calibration.py`), unless the data source keeps
its own calibration documents (`LinkingData.calibration_documents`: the
real-text recipe calibrates on real documents, not on weakly annotated ones). Held-out documents of the
training worlds give the model more confidence than unseen worlds will, so
in zero-shot use the threshold errs towards NIL; `linker.nil_prior` = 0
turns NIL off.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from blink_jax import checkpoint as ckpt_lib
from blink_jax import evaluators
from blink_jax import losses
from blink_jax import metric_writer
from blink_jax import optim
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax import trainer
from blink_jax import workdir as workdir_lib
from blink_jax.data import documents
from blink_jax.data import pipeline
from blink_jax.data import sources
from blink_jax.data.jsonl import Document
from blink_jax.inference import calibration as calibration_lib
from blink_jax.inference import encode
from blink_jax.inference import linker as linker_lib
from blink_jax.inference import load as load_lib
from blink_jax.inference import retrieve
from blink_jax.models import mention_detection

STAGE = "linker"


def documents_digest(docs: list[Document]) -> str:
  """A digest of training documents: ids, texts and spans.

  Their number alone misses a change of annotation (e.g. `data.weak_common_nouns`
  drops spans, not documents).
  """
  return workdir_lib.digest([(str(d.id), d.text, [(s.start, s.end, s.label_id) for s in d.spans])
                             for d in docs])


def fingerprint(config: ml_collections.ConfigDict, upstream: dict,
                docs: list[Document]) -> dict:
  """What a linker checkpoint must agree on to be resumed under `config`, including
  the bi-encoder it started from and the documents it trains on."""
  lc = config.linker
  return {"model": config.model.to_dict(), "tokenizer": config.tokenizer,
          "seed": config.seed, "data.max_context_len": config.data.max_context_len,
          "data.max_entity_len": config.data.max_entity_len,
          "linker.max_len": lc.max_len, "linker.max_width": lc.max_width, "linker.k": lc.k,
          "linker.global_batch": lc.train.global_batch,
          "linker.mention_batch": lc.train.mention_batch,
          "linker.link_weight": lc.link_weight, "linker.documents": len(docs),
          "linker.documents_digest": documents_digest(docs),
          "optim": lc.optim.to_dict(), "upstream": upstream}


def choose_student(config: ml_collections.ConfigDict, workdir: str,
                   tok: tokenization.Tokenizer, entities, heldout: list[Document], mesh,
                   writer: metric_writer.MetricWriter) -> load_lib.Trained:
  """The bi-encoder the linker starts from: the distilled student only where it retrieves
  at least as well as the bi-encoder on the held-out documents' gold spans.

  Distillation can make the bi-encoder worse (a weak teacher, a domain the teacher never
  saw), so it is measured rather than assumed. The choice is logged and reported under
  "linker/start"; it is the linker's upstream, so changing it retrains the linker.
  """
  if not workdir_lib.has_checkpoint(workdir, "distill"):
    return load_lib.load(workdir, "biencoder", mesh)
  options = [load_lib.load(workdir, stage, mesh) for stage in ("distill", "biencoder")]
  mentions, worlds = calibration_lib.gold_mentions(heldout, config.data.max_context_len)
  if not mentions:
    logging.warning("Linker: no held-out gold span to choose between the distilled and "
                    "the plain bi-encoder; starting from the distilled one.")
    return options[0]
  accuracy = {t.identity["stage"]: held_out_accuracy(t, tok, entities, mentions, worlds,
                                                     config, mesh) for t in options}
  chosen = options[0] if accuracy["distill"] >= accuracy["biencoder"] else options[1]
  logging.info("Linker: held-out accuracy@1 on %d gold spans: distilled %.4f, bi-encoder "
               "%.4f; starting from the %s.", len(mentions), accuracy["distill"],
               accuracy["biencoder"], chosen.identity["stage"])
  writer.results(f"{STAGE}/start", {"held_out_gold_spans": len(mentions),
                                    "distill/accuracy@1": accuracy["distill"],
                                    "biencoder/accuracy@1": accuracy["biencoder"],
                                    "chosen": chosen.identity["stage"]})
  return chosen


def held_out_accuracy(trained: load_lib.Trained, tok: tokenization.Tokenizer, entities,
                      mentions, worlds, config: ml_collections.ConfigDict, mesh) -> float:
  """The share of `mentions` whose gold entity is the bi-encoder's first candidate."""
  catalogue = retrieve.catalogue(trained.model, tok, entities, config, mesh,
                                 model_id=trained.identity)
  contexts = tok.mentions(mentions, config.data.max_context_len)
  q = encode.encode(trained.model.context_encoder, contexts.take, len(mentions),
                    batch_size=config.eval.batch_size, mesh=mesh,
                    desc=f"held-out spans ({trained.identity['stage']})")
  _, ids = catalogue.search(q, worlds, 1)
  return float(np.mean(ids[:, 0] == np.array([m.label_id for m in mentions])))


def make_optimizer(config: ml_collections.ConfigDict, params, total_steps: int):
  tx, schedule = optim.make(config.linker.optim, total_steps)
  return optim.freeze(tx, params, "entity_encoder"), schedule


def split_documents(docs: list[Document], fraction: float, seed: int
                    ) -> tuple[list[Document], list[Document]]:
  """(training, held-out) documents; at least one held out when fraction > 0."""
  if fraction <= 0 or len(docs) < 2:
    return docs, []
  order = np.random.default_rng([seed, 3]).permutation(len(docs))
  n_out = max(1, int(round(fraction * len(docs))))
  out = set(order[:n_out].tolist())
  return ([d for i, d in enumerate(docs) if i not in out],
          [d for i, d in enumerate(docs) if i in out])


def make_loss_and_grads(fm: trainer.Functional, link_weight: float):
  """(params, batch, key) -> ((loss, metrics), grads) of span BCE + linking CE."""

  def loss_and_grads(params, batch, key):
    def f(params):
      model = fm.apply(params, key)
      span = model(batch["ids"], batch["mask"])
      md, metrics = mention_detection.span_loss(span, batch["gold"], batch["valid"])
      q = model.context_encoder(batch["context_ids"], batch["context_mask"])
      scores = jnp.einsum("bd,bkd->bk", q, batch["entity_emb"],
                          preferred_element_type=jnp.float32)
      link, link_metrics = losses.candidate_loss(scores, batch["cand_gold"],
                                                 batch["cand_valid"])
      metrics.update(link_loss=link, accuracy=link_metrics["accuracy"])
      return md + link_weight * link, metrics
    return jax.value_and_grad(f, has_aux=True)(params)

  return loss_and_grads


class Batches:
  """One step's rows: text windows with span labels, and linking examples."""

  def __init__(self, windows: documents.Windows, contexts: tokenization.TokenBatch,
               cand_emb: np.ndarray, cand_gold: np.ndarray, cand_valid: np.ndarray):
    self.windows, self.contexts = windows, contexts
    self.cand_emb, self.cand_gold, self.cand_valid = cand_emb, cand_gold, cand_valid

  def __call__(self, window_rows: np.ndarray, mention_rows: np.ndarray) -> dict:
    out = self.windows.rows(window_rows)
    out.update(context_ids=self.contexts.ids[mention_rows],
               context_mask=self.contexts.mask[mention_rows],
               entity_emb=self.cand_emb[mention_rows],
               cand_gold=self.cand_gold[mention_rows],
               cand_valid=self.cand_valid[mention_rows])
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: sources.LinkingData | None = None) -> dict:
  """Trains mention detection + linking; calibrates; evaluates on eval documents.

  Returns {"linker": Linker (fast mode), "metrics": {set/mode: report},
  "calibration": dict}.
  """
  t_start = time.time()
  writer = metric_writer.MetricWriter(workdir)
  lc, tc = config.linker, config.linker.train

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh"))
  for name in ("global_batch", "mention_batch"):
    if tc[name] % mesh.size:
      raise ValueError(f"linker.train.{name}={tc[name]} must divide by the "
                       f"{mesh.size} devices.")

  objective = lc.get("calibration_objective", calibration_lib.MENTION_F1)
  if objective not in (calibration_lib.MENTION_F1, *calibration_lib.LINKING_F1):
    raise ValueError(f"linker.calibration_objective must be one of "
                     f"{(calibration_lib.MENTION_F1, *calibration_lib.LINKING_F1)}, "
                     f"got {objective!r}.")

  # ----------------------------------------------------------- documents
  # The bi-encoder's model, described by its own stored config (a distilled
  # student shares it).
  config = workdir_lib.inherit(config, workdir_lib.load_config(workdir, "biencoder"))
  workdir_lib.save_config(workdir, STAGE, config)
  tok = load_lib.tokenizer(config.tokenizer)
  data = data or sources.load(config, workdir, documents=True)
  if not data.train_documents:
    raise ValueError("The linker trains on documents with annotated spans "
                     "(config.data.train_documents, or the synthetic worlds).")
  if data.calibration_documents:  # Kept out by the data source (real text).
    train_docs, heldout = data.train_documents, data.calibration_documents
  else:
    train_docs, heldout = split_documents(data.train_documents, lc.heldout_fraction,
                                          config.seed)
  student = choose_student(config, workdir, tok, data.entities, heldout, mesh, writer)
  windows = documents.make_windows(
      tok, [d.text for d in train_docs], max_len=lc.max_len, max_width=lc.max_width,
      spans=[[(s.start, s.end) for s in d.spans] for d in train_docs])
  logging.info("Linker: %d training documents (%d windows), %d held out; %d gold spans "
               "no candidate span can match (wider than %d pieces or not on word "
               "boundaries).", len(train_docs), len(windows), len(heldout),
               windows.unreachable, lc.max_width)

  # ---------------------------------------------------------------- model
  logging.info("Linker: starting from the %s (step %d).", student.identity["stage"],
               student.identity["step"])
  model = mention_detection.build(config, vocab_size=tok.vocab_size, student=student.model)
  fm, params = trainer.Functional.split(model)

  # --------------------------------------------------- linking examples
  # The entity tower is the student's, frozen: its catalogue is the student's.
  entities = data.entities
  catalogue = retrieve.catalogue(model, tok, entities, config, mesh,
                                 model_id=student.identity)
  entity_emb = catalogue.embeddings
  ms, worlds = calibration_lib.gold_mentions(train_docs, config.data.max_context_len)
  window_sampler = pipeline.StepSampler(len(windows), tc.global_batch, config.seed)
  total_steps = tc.get("num_steps") or tc.num_epochs * window_sampler.steps_per_epoch
  # Encoding a gold span costs as much as a training example: when the run
  # reads fewer linking examples than there are gold spans, encode only a
  # fixed random draw of them (~5 of ~7 min on the real-text recipe's CPU).
  need = total_steps * tc.mention_batch
  if need < len(ms):
    pick = np.sort(np.random.default_rng([config.seed, 4]).choice(len(ms), need, replace=False))
    ms = [ms[i] for i in pick]
    worlds = None if worlds is None else [worlds[i] for i in pick]
  contexts = tok.mentions(ms, config.data.max_context_len)
  q = encode.encode(model.context_encoder, contexts.take, len(ms),
                    batch_size=config.eval.batch_size, mesh=mesh, desc="gold spans")
  _, cand_ids = catalogue.search(q, worlds, lc.k)
  gold = np.array([m.label_id for m in ms], np.int64)
  keep = np.flatnonzero((cand_ids == gold[:, None]).any(1))
  writer.results(f"{STAGE}/train_spans", {
      "documents": len(train_docs), "windows": len(windows),
      "gold_spans": sum(len(d.spans) for d in train_docs), "gold_spans_encoded": len(ms),
      "unreachable_by_mention_detection": windows.unreachable,
      "linking_examples": len(keep), "dropped_gold_not_in_top_k": len(ms) - len(keep),
      "k": lc.k})
  if not len(keep):
    raise ValueError(f"No gold span of the training documents has its entity in the "
                     f"bi-encoder's top {lc.k}: nothing to train linking on.")
  if len(keep) < tc.mention_batch:  # Tiny data: repeat examples to fill a batch.
    keep = np.resize(keep, tc.mention_batch)
  cand_rows = entities.positions_of(cand_ids[keep].reshape(-1)).reshape(len(keep), lc.k)
  batches = Batches(windows, contexts.take(keep),
                    entity_emb[np.maximum(cand_rows, 0)].astype(np.float32),
                    (cand_ids[keep] == gold[keep, None]).astype(np.float32), cand_rows >= 0)
  mention_sampler = pipeline.StepSampler(len(keep), tc.mention_batch, config.seed + 1)
  w_rows = sharding.process_rows(mesh, tc.global_batch)
  m_rows = sharding.process_rows(mesh, tc.mention_batch)
  tx, schedule = make_optimizer(config, params, total_steps)
  logging.info("Linker: %d steps of %d windows + %d linking examples x %d candidates.",
               total_steps, tc.global_batch, tc.mention_batch, lc.k)

  # --------------------------------------- index, cross-encoder, evaluators
  # The entity tower is frozen: the embeddings of the training loss are the
  # index's, whatever the step.
  fp = fingerprint(config, {student.identity["stage"]: student.identity},
                   data.train_documents)
  model_id = workdir_lib.identity(STAGE, total_steps, fp)
  full_index = linker_lib.make_index(config, entities, entity_emb, mesh, model_id)
  cross = (load_lib.load(workdir, "crossencoder", mesh)
           if workdir_lib.has_checkpoint(workdir, "crossencoder") else None)
  cross_model = cross.model if cross is not None else None
  # Evaluations during training use uncalibrated thresholds (no NIL); the
  # final one uses the calibration.
  spans = evaluators.Context(config, data, tok, mesh, writer, STAGE, extra={
      "index": full_index, "entities": entities, "cross": cross_model, "calibration": {}})
  evals = evaluators.for_stage(spans)

  # ---------------------------------------------------- shard & transfer
  state, state_sh = trainer.create_state(params, tx, mesh)

  # ---------------------------------------------------------- update step
  train_step = trainer.compile_step(trainer.make_train_step(
      make_loss_and_grads(fm, lc.link_weight), tx, schedule, config.seed), state_sh, mesh)

  # --------------------------------------------------- restore checkpoint
  ckpt = ckpt_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir, STAGE),
                               every=tc.checkpoint_every, keep=tc.keep_checkpoints,
                               fingerprint=fp)
  state, _ = trainer.restore(ckpt, state, state_sh, what="linker", total_steps=total_steps)

  # ----------------------------------------------------------- train loop
  state = trainer.train_loop(
      state=state, train_step=train_step,
      loader=trainer.make_loader(
          lambda step: (window_sampler.local_indices(step, w_rows),
                        mention_sampler.local_indices(step, m_rows)),
          lambda rows: batches(*rows), config.get("input")),
      total_steps=total_steps, mesh=mesh, ckpt=ckpt, writer=writer,
      tag=f"{STAGE}/train", log_every=tc.get("log_every", 50),
      evaluate=evaluators.periodic(evals, config.eval.get("every", 0),
                                   lambda state: fm.module(state["params"])))
  model = fm.module(state["params"])

  # ----------------------------------------------------------- calibration
  # Every process joins the save: it gathers the rows with collectives.
  full_index.save(workdir_lib.linker_index_dir(workdir))
  modes = ("fast", "full") if cross is not None else ("fast",)
  linker = linker_lib.Linker(config, tok, model, full_index, entities, cross=cross_model,
                             mesh=mesh)
  calibration = calibration_lib.calibrate(linker, heldout, modes) if heldout else {}
  # Full mode's threshold holds for this cross-encoder only.
  calibration["crossencoder"] = cross.identity if cross is not None else None
  if not heldout:
    logging.warning("Linker: no held-out documents; mention threshold 0, no NIL.")
  else:
    logging.info("Linker calibration: %s", calibration)
  if jax.process_index() == 0:
    metric_writer.atomic_write_json(workdir_lib.calibration_path(workdir),
                                    calibration)
  writer.results(f"{STAGE}/calibration", calibration, total_steps)

  # ----------------------------------------------------------- evaluation
  spans.extra["calibration"] = calibration
  results = evals["spans"].run(model, total_steps) if "spans" in evals else {}
  writer.close()
  logging.info("Linker done in %.0fs.", time.time() - t_start)
  fast = linker_lib.Linker(config, tok, model, full_index, entities, cross=cross_model,
                           calibration=calibration, mode="fast", mesh=mesh)
  return {"linker": fast, "metrics": results, "calibration": calibration}
