"""The end-to-end linker's training: mention detection jointly with linking (ELQ-style).

Reads top to bottom: mesh -> documents -> model -> linking examples -> shard &
transfer -> update step -> restore checkpoint -> train loop -> calibration ->
evaluation. `train_and_evaluate(config, workdir)` is the entry point
(config.mode = "train_linker"); the demo calls it too.

The model (`models/mention_detection.MentionLinker`) is the final bi-encoder
(the distilled student when WORKDIR/distill has one, else the bi-encoder)
with a span head on its context tower. One step's loss is

    span BCE over B text windows + link_weight * softmax CE over k candidates
    of M gold spans (as BLINK mentions, read by the same context tower),

so detection and linking share, and jointly train, the context encoder. The
entity tower is frozen: the catalogue's embeddings are computed once, make
the index (WORKDIR/linker/index) and the candidates' side of the loss.
Spans come from training documents ({"text", "mentions": [...]}); gold spans
whose entity is not in the catalogue or not in the top k are dropped from the
linking loss and counted.

A fraction of the training documents is held out to calibrate two
thresholds, stored in WORKDIR/linker/calibration.json and overridable in the
config: the span logit above which a span is a mention (best strong mention
F1), and, per mode, the confidence (the best candidate's softmax probability
among the mode's candidates) below which a linked mention is NIL. No NIL
labels are needed for the latter: each held-out mention is scored once with
its gold entity in the catalogue (a correct link should pass) and once
without it (the best remaining candidate should not); the threshold
maximises the expected accuracy of that decision when a share
`linker.nil_prior` of mentions is outside the catalogue (wikiel's documents:
2-18%). Held-out documents of the training worlds give the model more
confidence than unseen worlds will, so in zero-shot use the threshold errs
towards NIL; a prior of 0 turns NIL off.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from blink_jax import checkpoint as ckpt_lib
from blink_jax import evaluate
from blink_jax import index as index_lib
from blink_jax import linker as linker_lib
from blink_jax import losses
from blink_jax import metric_writer
from blink_jax import optim
from blink_jax import sharding
from blink_jax import span_metrics
from blink_jax import tokenization
from blink_jax import train_biencoder
from blink_jax import trainer
from blink_jax.data import documents
from blink_jax.data import pipeline
from blink_jax.data import sources
from blink_jax.data.jsonl import Document, Entity
from blink_jax.data.records import Records
from blink_jax.models import bert
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder
from blink_jax.models import mention_detection

STAGE = linker_lib.STAGE


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What a linker checkpoint must agree on to be resumed under `config`."""
  lc = config.linker
  return {**train_biencoder.fingerprint(config), "linker.max_len": lc.max_len,
          "linker.max_width": lc.max_width, "linker.k": lc.k,
          "linker.global_batch": lc.train.global_batch,
          "linker.mention_batch": lc.train.mention_batch}


def build(config: ml_collections.ConfigDict, vocab_size: int,
          student: biencoder.BiEncoder | None = None) -> mention_detection.MentionLinker:
  student = student or biencoder.build(config.model, vocab_size=vocab_size, seed=config.seed)
  return mention_detection.MentionLinker(
      student.context_encoder, student.entity_encoder, max_width=config.linker.max_width,
      rngs=bert.make_rngs(config.seed + 2))


def make_optimizer(config: ml_collections.ConfigDict, params, total_steps: int):
  tx, schedule = optim.make(config.linker.optim, total_steps)
  return optim.freeze(tx, params, "entity_encoder"), schedule


def load_trained(config: ml_collections.ConfigDict, workdir: str, mesh=None
                 ) -> tuple[mention_detection.MentionLinker, int]:
  """The linker model of WORKDIR/linker's latest checkpoint, and its step."""
  mesh = mesh or sharding.make_mesh(config.get("mesh"))
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  fm, params = trainer.Functional.split(build(config, tok.vocab_size))
  tx, _ = make_optimizer(config, params, 1)
  params, step = trainer.restore_params(linker_lib.stage_dir(workdir), params, tx, mesh,
                                        fingerprint(config), "linker")
  return fm.module(params), step


def load_student(config, workdir: str, mesh) -> tuple[biencoder.BiEncoder, str]:
  """The distilled bi-encoder if there is one, else the trained bi-encoder."""
  from blink_jax import distill  # pylint: disable=g-import-not-at-top
  try:
    return distill.load_trained(config, workdir, mesh)[0], "distilled bi-encoder"
  except FileNotFoundError:
    return train_biencoder.load_trained(config, workdir, mesh)[0], "bi-encoder"


def catalogue(config: ml_collections.ConfigDict, workdir: str) -> Records[Entity]:
  return sources.load(config, workdir).entities


def build_index(config, entities: Records[Entity], embeddings: np.ndarray, mesh, step: int
                ) -> index_lib.Index:
  """The linker's index of `entities`, whose `embeddings` its (frozen) entity tower made."""
  titles = [e.title for e in entities.take(np.arange(len(entities)))]
  ic = config.index
  return index_lib.Index.build(
      embeddings, entities.labels, titles, entities.worlds, backend=ic.backend,
      storage=ic.storage, mesh=mesh, k=ic.k, target_recall=ic.target_recall,
      scann=dict(ic.scann), model=index_lib.model_id(step, fingerprint(config)),
      seed=config.seed)


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


def gold_mentions(docs: list[Document], max_len: int):
  """Each in-catalogue gold span as a BLINK mention, with its document's world."""
  ms, worlds = [], []
  for d in docs:
    for s in d.spans:
      if s.label_id is not None and s.label_id >= 0:
        ms.append(dataclasses.replace(linker_lib.mention_of(d.text, s.start, s.end, max_len),
                                      label_id=s.label_id, world=d.world))
        worlds.append(d.world)
  return ms, (None if set(worlds) <= {None} else worlds)


def gold_spans(doc: Document) -> list[tuple[int, int, int]]:
  return [(s.start, s.end, s.label_id if s.label_id is not None else -1) for s in doc.spans]


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


def _nil_threshold(s_in: np.ndarray, correct: np.ndarray, s_out: np.ndarray,
                   nil_prior: float) -> float:
  """The confidence threshold that best keeps correct links and rejects gold-less ones.

  s_in: [N] confidence with the gold entity in the catalogue, correct: [N]
  whether the best candidate was the gold one, s_out: [N] confidence without
  it. Maximises the expected accuracy of the NIL decision when a share
  `nil_prior` of mentions has no entity in the catalogue:
  (1 - nil_prior) * P(correct link kept) + nil_prior * P(gold-less rejected).
  """
  cands = np.unique(np.concatenate([s_in, s_out, [-np.inf]]))
  acc = [(1 - nil_prior) * (correct & (s_in >= t)).mean() + nil_prior * (s_out < t).mean()
         for t in cands]
  return float(cands[int(np.argmax(acc))])


def calibrate(linker: linker_lib.Linker, docs: list[Document], modes) -> dict:
  """Mention and NIL thresholds from held-out documents (see the module docstring)."""
  lc = linker.config.linker
  texts = [d.text for d in docs]
  windows = documents.make_windows(linker.tok, texts, max_len=lc.max_len,
                                   max_width=lc.max_width)
  logits = linker.span_logits(windows)
  vals = logits[windows.valid]
  grid = np.unique(np.concatenate([[0.0], np.quantile(vals, np.linspace(0.8, 0.9999, 60))]))
  best = (-1.0, 0.0)
  for t in grid:
    pred = documents.decode_spans(windows, logits, float(t), len(docs))
    scores = span_metrics.score_documents(
        ([(s, e, -1) for s, e, _ in gold_spans(d)], [(s, e, -1) for s, e, _ in p])
        for d, p in zip(docs, pred))
    f1 = scores["mention_detection/strong"].f1
    best = max(best, (f1, float(t)))
  out = {"mention_threshold": best[1], "heldout_mention_f1": best[0],
         "heldout_documents": len(docs), "nil_threshold": {}}
  ms, worlds = gold_mentions(docs, linker.config.data.max_context_len)
  out["heldout_mentions"] = len(ms)
  if not ms:
    return out
  gold = np.array([m.label_id for m in ms])
  for mode in modes:
    ids, scores = linker.scored(ms, worlds, mode)
    first_is_gold = ids[:, 0] == gold
    # The same list with the gold entity taken out: a mention whose entity is
    # not in the catalogue.
    without = np.where(ids == gold[:, None], -np.inf, scores)
    without = np.take_along_axis(without, np.argsort(-without, 1, kind="stable"), 1)
    out["nil_threshold"][mode] = _nil_threshold(
        linker_lib.confidence(scores), first_is_gold, linker_lib.confidence(without),
        float(linker.config.linker.nil_prior))
  return out


def evaluate_documents(linker: linker_lib.Linker, docs: list[Document], mode: str) -> dict:
  """ELQ-style P/R/F1 (mention detection and linking, strong and weak) of `linker`."""
  texts = [d.text for d in docs]
  worlds = [d.world for d in docs]
  pred = linker.link(texts, worlds=None if set(worlds) <= {None} else worlds, mode=mode)
  totals = span_metrics.score_documents(
      (gold_spans(d), [(r["start"], r["end"], r["entity_id"], r["nil"]) for r in p])
      for d, p in zip(docs, pred))
  return {**span_metrics.report(totals), "documents": len(docs)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: sources.LinkingData | None = None) -> dict:
  """Trains mention detection + linking; calibrates; evaluates on eval documents.

  Returns {"linker": Linker (fast mode), "metrics": {set/mode: report},
  "calibration": dict}.
  """
  t_start = time.time()
  writer = metric_writer.MetricWriter(workdir)
  lc, tc = config.linker, config.linker.train
  out_dir = linker_lib.stage_dir(workdir)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    metric_writer.atomic_write_json(os.path.join(out_dir, linker_lib.CONFIG), config.to_dict())

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh"))
  for name in ("global_batch", "mention_batch"):
    if tc[name] % mesh.size:
      raise ValueError(f"linker.train.{name}={tc[name]} must divide by the "
                       f"{mesh.size} devices.")

  # ----------------------------------------------------------- documents
  tok = tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve(config.tokenizer))
  data = data or sources.load(config, workdir, documents=True)
  if not data.train_documents:
    raise ValueError("The linker trains on documents with annotated spans "
                     "(config.data.train_documents, or the synthetic worlds).")
  train_docs, heldout = split_documents(data.train_documents, lc.heldout_fraction,
                                        config.seed)
  windows = documents.make_windows(
      tok, [d.text for d in train_docs], max_len=lc.max_len, max_width=lc.max_width,
      spans=[[(s.start, s.end) for s in d.spans] for d in train_docs])
  logging.info("Linker: %d training documents (%d windows), %d held out; %d gold spans "
               "no candidate span can match (wider than %d pieces or not on word "
               "boundaries).", len(train_docs), len(windows), len(heldout),
               windows.unreachable, lc.max_width)

  # ---------------------------------------------------------------- model
  student, what = load_student(config, workdir, mesh)
  logging.info("Linker: starting from the %s.", what)
  model = build(config, tok.vocab_size, student)
  fm, params = trainer.Functional.split(model)

  # --------------------------------------------------- linking examples
  entities = data.entities
  entity_emb = evaluate.embed_entities(model, tok, entities, config, mesh)
  index = index_lib.Index.build(entity_emb, entities.labels, None, entities.worlds,
                                backend="exact", mesh=mesh)
  ms, worlds = gold_mentions(train_docs, config.data.max_context_len)
  contexts = tok.encode_mentions([m.context_left for m in ms], [m.mention for m in ms],
                                 [m.context_right for m in ms], config.data.max_context_len)
  q = evaluate.encode(model.context_encoder, lambda r: _take(contexts, r), len(ms),
                      batch_size=config.eval.batch_size, mesh=mesh, desc="gold spans")
  _, cand_ids = index.search(q, lc.k, worlds)
  gold = np.array([m.label_id for m in ms], np.int64)
  keep = np.flatnonzero((cand_ids == gold[:, None]).any(1))
  writer.results(f"{STAGE}/train_spans", {
      "documents": len(train_docs), "windows": len(windows),
      "gold_spans": sum(len(d.spans) for d in train_docs),
      "unreachable_by_mention_detection": windows.unreachable,
      "linking_examples": len(keep), "dropped_gold_not_in_top_k": len(ms) - len(keep),
      "k": lc.k})
  if not len(keep):
    raise ValueError(f"No gold span of the training documents has its entity in the "
                     f"bi-encoder's top {lc.k}: nothing to train linking on.")
  if len(keep) < tc.mention_batch:  # Tiny data: repeat examples to fill a batch.
    keep = np.resize(keep, tc.mention_batch)
  cand_rows = entities.positions_of(cand_ids[keep].reshape(-1)).reshape(len(keep), lc.k)
  batches = Batches(windows, _take(contexts, keep),
                    entity_emb[np.maximum(cand_rows, 0)].astype(np.float32),
                    (cand_ids[keep] == gold[keep, None]).astype(np.float32), cand_rows >= 0)
  window_sampler = pipeline.StepSampler(len(windows), tc.global_batch, config.seed)
  mention_sampler = pipeline.StepSampler(len(keep), tc.mention_batch, config.seed + 1)
  total_steps = tc.get("num_steps") or tc.num_epochs * window_sampler.steps_per_epoch
  w_rows = sharding.process_rows(mesh, tc.global_batch)
  m_rows = sharding.process_rows(mesh, tc.mention_batch)
  tx, schedule = make_optimizer(config, params, total_steps)
  logging.info("Linker: %d steps of %d windows + %d linking examples x %d candidates.",
               total_steps, tc.global_batch, tc.mention_batch, lc.k)

  # ---------------------------------------------------- shard & transfer
  state, state_sh = trainer.create_state(params, tx, mesh)

  # ---------------------------------------------------------- update step
  train_step = trainer.compile_step(trainer.make_train_step(
      make_loss_and_grads(fm, lc.link_weight), tx, schedule, config.seed), state_sh, mesh)

  # --------------------------------------------------- restore checkpoint
  ckpt = ckpt_lib.Checkpointer(out_dir, every=tc.checkpoint_every,
                               keep=tc.keep_checkpoints, fingerprint=fingerprint(config))
  state, _ = trainer.restore(ckpt, state, state_sh, what="linker", total_steps=total_steps)

  # ----------------------------------------------------------- train loop
  state = trainer.train_loop(
      state=state, train_step=train_step,
      batch=lambda step: batches(window_sampler.local_indices(step, w_rows),
                                 mention_sampler.local_indices(step, m_rows)),
      total_steps=total_steps, mesh=mesh, ckpt=ckpt, writer=writer,
      tag=f"{STAGE}/train", log_every=tc.get("log_every", 50))
  model = fm.module(state["params"])

  # ----------------------------------------------------------- calibration
  # The entity tower is frozen: the embeddings of the training loss are the index's.
  full_index = build_index(config, entities, entity_emb, mesh, total_steps)
  if jax.process_index() == 0:
    full_index.save(os.path.join(out_dir, "index"))
  cross = _cross_encoder(config, workdir, mesh)
  modes = ("fast", "full") if cross is not None else ("fast",)
  linker = linker_lib.Linker(config, tok, model, full_index, entities, cross=cross,
                             mesh=mesh)
  calibration = calibrate(linker, heldout, modes) if heldout else {}
  if not heldout:
    logging.warning("Linker: no held-out documents; mention threshold 0, no NIL.")
  else:
    logging.info("Linker calibration: %s", calibration)
  if jax.process_index() == 0:
    metric_writer.atomic_write_json(os.path.join(out_dir, linker_lib.CALIBRATION),
                                    calibration)
  writer.results(f"{STAGE}/calibration", calibration, total_steps)

  # ----------------------------------------------------------- evaluation
  results = {}
  for mode in modes:
    linker = linker_lib.Linker(config, tok, model, full_index, entities, cross=cross,
                               calibration=calibration, mode=mode, mesh=mesh)
    for name, docs in data.eval_documents.items():
      report = evaluate_documents(linker, docs, mode)
      results[f"{name}/{mode}"] = report
      writer.results(f"{name}/linker {mode}", report, total_steps)
      logging.info("%s linker (%s): mention F1 %.3f (weak %.3f), linking F1 %.3f "
                   "(weak %.3f)", name, mode, report["mention_detection/strong/f1"],
                   report["mention_detection/weak/f1"], report["linking/strong/f1"],
                   report["linking/weak/f1"])
  writer.close()
  logging.info("Linker done in %.0fs.", time.time() - t_start)
  fast = linker_lib.Linker(config, tok, model, full_index, entities, cross=cross,
                           calibration=calibration, mode="fast", mesh=mesh)
  return {"linker": fast, "metrics": results, "calibration": calibration}


def _cross_encoder(config, workdir: str, mesh):
  from blink_jax import train_crossencoder  # pylint: disable=g-import-not-at-top
  try:
    return train_crossencoder.load_trained(config, workdir, mesh)[0]
  except FileNotFoundError:
    return None


def _take(batch: tokenization.TokenBatch, rows: np.ndarray) -> tokenization.TokenBatch:
  return tokenization.TokenBatch(ids=batch.ids[rows], mask=batch.mask[rows],
                                 segment_ids=batch.segment_ids[rows],
                                 offsets=batch.offsets[rows])
