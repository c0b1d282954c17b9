"""The end-to-end linker: span scores, windows, decoding, NIL, training, API and CLI."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from blink_jax import metric_writer
from blink_jax import span_metrics
from blink_jax.data.records import Records
from blink_jax.inference import linker as linker_lib
from blink_jax.inference import load as load_lib
from blink_jax.inference import retrieve
from blink_jax.inference import ranking
from blink_jax import sharding
from blink_jax import tokenization
from blink_jax import evaluate
from blink_jax.inference import calibration
from blink_jax.stages import linker as train_linker
from blink_jax import trainer
from blink_jax.data import documents
from blink_jax.data import jsonl
from blink_jax.data import sources
from blink_jax.data.jsonl import Document
from blink_jax.models import mention_detection
from conftest import private_workdir as _private_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------- span scores
def test_span_logits_equal_a_loop_over_spans():
  tok_logits = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
  got = np.asarray(mention_detection.span_logits(jnp.asarray(tok_logits), 3))
  for b in range(2):
    for i in range(7):
      for w in range(3):
        if i + w >= 7:
          continue
        want = (tok_logits[b, i, 0] + tok_logits[b, i + w, 1]
                + tok_logits[b, i:i + w + 1, 2].sum())
        np.testing.assert_allclose(got[b, i, w], want, rtol=1e-5, atol=1e-5)


def test_span_loss_balances_gold_and_other_spans_by_hand():
  logits = jnp.array([[[0.0, 2.0], [-1.0, 5.0]]])
  gold = jnp.array([[[True, False], [False, False]]])
  valid = jnp.array([[[True, True], [True, False]]])  # (1, 1) is no candidate.
  loss, m = mention_detection.span_loss(logits, gold, valid)
  softplus = lambda x: np.log1p(np.exp(x))
  # Gold: one span at logit 0 -> softplus(-0). Others: logits 2 and -1.
  want = 0.5 * softplus(0.0) + 0.5 * (softplus(2.0) + softplus(-1.0)) / 2
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  # At logit > 0 only (0, 1) is predicted: precision 0 of 1, recall 0 of 1.
  assert float(m["mention_precision"]) == 0.0 and float(m["mention_recall"]) == 0.0


def _tiny_linker_loss_and_grads(n_devices, mesh_cfg=None):
  """Span BCE + linking CE of a tiny random MentionLinker on a fixed batch."""
  config = ml_collections.ConfigDict(dict(
      seed=0, model=dict(init_from="", init_num_layers=0, pooling="mean", projection_dim=0,
                         bert=dict(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4,
                                   intermediate_size=64, max_position=32, dropout=0.1,
                                   attention_dropout=0.0)),
      linker=dict(max_width=3)))
  fm, params = trainer.Functional.split(mention_detection.build(config, vocab_size=64))
  rng = np.random.default_rng(0)
  b, t, m, k, d = 8, 12, 8, 4, 32
  valid = rng.random((b, t, 3)) < 0.6
  batch = {"ids": rng.integers(5, 64, (b, t)).astype(np.int32),
           "mask": np.ones((b, t), np.int32), "valid": valid,
           "gold": valid & (rng.random((b, t, 3)) < 0.1),
           "context_ids": rng.integers(5, 64, (m, t)).astype(np.int32),
           "context_mask": np.ones((m, t), np.int32),
           "entity_emb": rng.normal(size=(m, k, d)).astype(np.float32),
           "cand_gold": np.eye(k, dtype=np.float32)[rng.integers(0, k, m)],
           "cand_valid": np.ones((m, k), bool)}
  mesh = sharding.make_mesh(mesh_cfg or {"data": n_devices}, jax.devices()[:n_devices])
  params = jax.device_put(params, sharding.tree_shardings(mesh, params))
  fn = jax.jit(train_linker.make_loss_and_grads(fm, 1.0))
  (loss, _), grads = fn(params, sharding.global_batch(batch, mesh), jax.random.key(0))
  return float(loss), jax.tree.map(np.asarray, grads)


def test_linker_loss_on_8_devices_equals_1_device():
  assert len(jax.devices()) == 8
  ref_loss, ref_grads = _tiny_linker_loss_and_grads(1)
  for mesh_cfg in ({"data": 8}, {"data": 2, "fsdp": 4}):
    loss, grads = _tiny_linker_loss_and_grads(8, mesh_cfg)
    assert abs(loss - ref_loss) <= 1e-5
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ windows
VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]",
         "the", "big", "##gest", "cat", "sat", "on", "mat", "paris", "."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return tokenization.Tokenizer.from_pretrained(d)


def test_windows_spans_on_word_boundaries_with_gold(tok):
  text = "the biggest cat sat on paris."
  # Pieces: the(0) big(1) ##gest(2) cat(3) sat(4) on(5) paris(6) .(7)
  # Gold: "biggest cat" = chars 4..15 -> pieces 1..3; "paris" = 23..28 -> piece 6.
  w = documents.make_windows(tok, [text], max_len=12, max_width=3,
                             spans=[[(4, 15), (23, 28)]])
  assert len(w) == 1 and w.unreachable == 0
  # Window token t is piece t - 1 ([CLS] first).
  assert w.tokens.ids[0, :10].tolist() == [5, 7, 8, 9, 10, 11, 12, 14, 15, 6]
  valid = {(i - 1, i - 1 + wd) for i, wd in zip(*np.nonzero(w.valid[0]))}
  # "##gest" can neither start a span nor follow its end: no span starts at piece 2
  # or ends at piece 1.
  assert not any(s == 2 or e == 1 for s, e in valid)
  assert (0, 0) in valid and (1, 2) in valid and (1, 3) in valid and (5, 7) in valid
  assert (0, 3) not in valid  # 4 pieces > max_width 3.
  gold = {(i - 1, i - 1 + wd) for i, wd in zip(*np.nonzero(w.gold[0]))}
  assert gold == {(1, 3), (6, 6)}


def test_long_text_windows_overlap_and_count_unreachable(tok):
  text = " ".join(["the cat sat on the mat ."] * 6)  # 42 pieces.
  # A gold span of 5 words (wider than max_width 4) cannot be matched.
  w = documents.make_windows(tok, [text], max_len=12, max_width=4,
                             spans=[[(0, 3), (4, 21)]])
  assert w.unreachable == 1
  # Body 10 pieces, stride 5: windows start at pieces 0, 5, ..., 35; the last,
  # 35..41, is short. Consecutive windows overlap by half.
  first_piece = [int(w.tokens.ids[n, 1]) for n in range(len(w))]
  assert len(w) == 8
  assert w.tokens.mask.sum(1).tolist() == [12] * 7 + [9]
  assert first_piece == [tok.pieces([text])[0][0][s] for s in range(0, 40, 5)]


def test_decode_keeps_the_best_of_overlapping_spans(tok):
  text = "the cat sat on the mat."
  w = documents.make_windows(tok, [text, "paris"], max_len=16, max_width=3)
  logits = np.full(w.valid.shape, -9.0, np.float32)
  logits[0, 2, 0] = 3.0   # "cat"
  logits[0, 2, 1] = 4.0   # "cat sat": overlaps "cat", scores higher -> kept.
  logits[0, 6, 0] = 1.0   # "mat"
  logits[0, 5, 1] = 0.5   # "the mat": overlaps "mat", lower -> dropped.
  logits[1, 1, 0] = 2.0   # second text: "paris"
  out = documents.decode_spans(w, logits, 0.0, 2)
  assert [(s, e) for s, e, _ in out[0]] == [(4, 11), (19, 22)]
  assert [text[s:e] for s, e, _ in out[0]] == ["cat sat", "mat"]
  assert [(s, e) for s, e, _ in out[1]] == [(0, 5)]
  assert documents.decode_spans(w, logits, 3.5, 2)[0] == [(4, 11, 4.0)]
  # A width bonus of 0.6 per extra piece lifts "the mat" (0.5 + 0.6) over "mat"
  # (1.0); 0.4 does not (0.9 < 1.0). Logits come back unchanged.
  assert [text[s:e] for s, e, _ in documents.decode_spans(w, logits, 0.0, 2, 0.6)[0]] == [
      "cat sat", "the mat"]
  assert documents.decode_spans(w, logits, 0.0, 2, 0.6)[0][1] == (15, 22, 0.5)
  assert [text[s:e] for s, e, _ in documents.decode_spans(w, logits, 0.0, 2, 0.4)[0]] == [
      "cat sat", "mat"]


def test_calibration_picks_the_width_bonus_that_finds_whole_names(tok):
  text = "the cat sat on the mat."
  gold = Document(id="d", text=text, spans=(jsonl.Span(4, 11, -1, "", "cat sat"),))
  w = documents.make_windows(tok, [text], max_len=16, max_width=3)
  logits = np.full(w.valid.shape, -9.0, np.float32)
  logits[0, 2, 0] = 3.0   # "cat": a part, outscores the whole
  logits[0, 3, 0] = 3.0   # "sat"
  logits[0, 2, 1] = 2.0   # "cat sat": the gold span

  class FakeLinker:  # Only what the mention half of `calibrate` reads.
    config = ml_collections.ConfigDict({"linker": {
        "max_len": 16, "max_width": 3, "width_bonus_grid": (0.0, 0.5, 2.0)},
        "data": {"max_context_len": 16}})
    width_bonus = 0.0

    def __init__(self):
      self.tok = tok

    def span_logits(self, windows):
      return logits

  fake = FakeLinker()
  out = calibration.calibrate(fake, [gold], modes=())
  # 0.5 is not enough (2 + 0.5 < 3); 2.0 is, and F1 is then 1.
  assert out["width_bonus"] == 2.0 and out["heldout_mention_f1"] == 1.0
  assert fake.width_bonus == 2.0
  FakeLinker.config.linker.width_bonus_grid = (0.0,)
  out = calibration.calibrate(fake, [gold], modes=())
  assert out["width_bonus"] == 0.0 and out["heldout_mention_f1"] < 1.0


def _fake_linker(tok, logits, best, objective):
  """What `calibrate` reads: fixed span logits, and per mention text its best
  (entity, score), against a second candidate (99) scoring 0."""

  class FakeLinker:
    config = ml_collections.ConfigDict({"linker": {
        "max_len": 16, "max_width": 3, "width_bonus_grid": (0.0,), "nil_prior": 0.1,
        "calibration_objective": objective, "link_alpha_grid": ()},
        "data": {"max_context_len": 16}})
    width_bonus = 0.0

    def __init__(self):
      self.tok = tok

    def span_logits(self, windows):
      return logits

    def scored(self, mentions, worlds, mode):
      ids = np.array([[best[m.mention][0], 99] for m in mentions], np.int64).reshape(-1, 2)
      scores = np.array([[best[m.mention][1], 0.0] for m in mentions],
                        np.float32).reshape(-1, 2)
      return ids, scores

  return FakeLinker()


def test_calibration_for_linking_drops_a_span_linked_wrong(tok):
  """Mention F1 keeps a NIL gold the linker links confidently (to the wrong entity);
  linking F1 is better without it, and the only way to drop it is a higher
  mention threshold (a NIL threshold above .9997 would drop the right links too)."""
  text = "the cat sat on the mat."
  gold = Document(id="d", text=text, spans=(jsonl.Span(4, 7, 5, "", "cat"),
                                            jsonl.Span(8, 11, -1, "", "sat"),
                                            jsonl.Span(19, 22, 6, "", "mat")))
  w = documents.make_windows(tok, [text], max_len=16, max_width=3)
  logits = np.full(w.valid.shape, -9.0, np.float32)
  logits[0, 2, 0], logits[0, 3, 0], logits[0, 6, 0] = 3.0, 1.0, 2.0  # cat, sat, mat
  best = {"cat": (5, 3.0), "sat": (7, 8.0), "mat": (6, 2.2)}  # (entity, score vs 0.0)
  fake = _fake_linker(tok, logits, best, "mention_detection/strong/f1")
  out = calibration.calibrate(fake, [gold], modes=("fast",))
  assert out["mention_threshold"] <= 1.0 and out["heldout_mention_f1"] == 1.0
  fake.config.linker.calibration_objective = "linking/strong/f1"
  out = calibration.calibrate(fake, [gold], modes=("fast",))
  assert 1.0 < out["mention_threshold"] <= 2.0
  assert out["heldout_linking_f1"] == {"fast": 1.0}
  assert out["nil_threshold"]["fast"] == -np.inf  # Nothing left to say NIL to.
  assert out["mention_f1_threshold"] <= 1.0


def test_calibration_for_linking_finds_a_joint_cut_no_pair_of_thresholds_finds(tok):
  """cat (logit 5, confidence .52, right), sat (1.2, .90, a NIL gold linked) and mat
  (1.0, .95, right). Keeping mat keeps sat detected, and a confidence threshold that
  drops sat (.90) drops cat (.52): no (mention, NIL) pair links all and only the right
  ones. logit + 4 log(confidence) does: cat 2.41, mat .795, sat .779."""
  text = "the cat sat on the mat."
  gold = Document(id="d", text=text, spans=(jsonl.Span(4, 7, 5, "", "cat"),
                                            jsonl.Span(8, 11, -1, "", "sat"),
                                            jsonl.Span(19, 22, 6, "", "mat")))
  w = documents.make_windows(tok, [text], max_len=16, max_width=3)
  logits = np.full(w.valid.shape, -9.0, np.float32)
  logits[0, 2, 0], logits[0, 3, 0], logits[0, 6, 0] = 5.0, 1.2, 1.0  # cat, sat, mat
  # Scores against a second candidate at 0: confidence = sigmoid(score).
  logit = lambda p: float(np.log(p / (1 - p)))
  best = {"cat": (5, logit(.525)), "sat": (7, logit(.9)), "mat": (6, logit(.95))}
  fake = _fake_linker(tok, logits, best, "linking/strong/f1")
  separate = calibration.calibrate(fake, [gold], modes=("fast",))
  assert separate["heldout_linking_f1"]["fast"] < 1.0 and separate["link_rule"] == {}
  fake.config.linker.link_alpha_grid = (1.0, 4.0, 16.0)
  joint = calibration.calibrate(fake, [gold], modes=("fast",))
  assert joint["heldout_linking_f1"] == {"fast": 1.0}
  rule = joint["link_rule"]["fast"]
  assert rule["alpha"] == 4.0 and 0.779 < rule["threshold"] <= 0.796
  # Given spans have no logit: they keep the gold-span calibration's NIL threshold.
  assert joint["nil_threshold"] == joint["mention_f1_nil_threshold"]
  # The linker cuts detected spans as calibrated.
  conf = np.array([.525, .9, .95])
  kept = linker_lib.link_score(np.array([5.0, 1.2, 1.0]), conf, 4.0) >= rule["threshold"]
  assert kept.tolist() == [True, False, True]


@pytest.mark.parametrize("weak", [False, True])
def test_best_nil_threshold_equals_span_metrics_at_every_threshold(weak):
  rng = np.random.default_rng(3 + weak)
  golds, spans, rows = [], [], 0
  for _ in range(30):
    starts = np.sort(rng.choice(np.arange(1, 60), 6, replace=False))
    golds.append([(int(s), int(s) + int(rng.integers(1, 5)), int(rng.integers(-1, 4)))
                  for s in starts[::2]])
    doc = []
    for s in starts:
      doc.append((int(s) + int(rng.integers(-1, 2)), int(s) + int(rng.integers(2, 5)), rows))
      rows += 1
    spans.append(doc)
  top = rng.integers(-1, 4, rows)
  conf = rng.choice(np.linspace(0.1, 1.0, 10), rows)  # Ties on purpose.
  f1, t = calibration.best_nil_threshold(golds, spans, top, conf, weak)
  key = f"linking/{'weak' if weak else 'strong'}"

  def reference(thr):
    return span_metrics.score_documents(
        (g, [(s, e, int(top[r]) if conf[r] >= thr and top[r] >= 0 else -1) for s, e, r in p])
        for g, p in zip(golds, spans))[key].f1

  every = {thr: reference(thr) for thr in [-np.inf, *np.unique(conf)]}
  assert f1 == pytest.approx(max(every.values())) and f1 == pytest.approx(reference(t))
  assert t == min(thr for thr, v in every.items() if v == pytest.approx(f1))
  assert 0 < f1 < 1  # The random case is not degenerate.


# ---------------------------------------------------------------------- NIL
def test_confidence_is_the_softmax_of_the_best():
  s = np.array([[2.0, 0.0, -np.inf], [1.0, 1.0, 1.0]])
  np.testing.assert_allclose(linker_lib.confidence(s),
                             [1 / (1 + np.exp(-2.0)), 1 / 3], rtol=1e-6)


def test_nil_threshold_by_hand():
  # Correct links at 0.9, 0.8 (and a wrong one at 0.95); gold-removed at 0.5, 0.85, 0.3.
  s_in = np.array([0.9, 0.8, 0.95])
  correct = np.array([True, True, False])
  s_out = np.array([0.5, 0.85, 0.3])
  # Prior 0.5: t = 0.8 keeps 2/3 links and rejects 2/3 -> 0.5*2/3 + 0.5*2/3 = 0.667;
  # t = 0.9 keeps 1/3, rejects 3/3 -> 0.667 too; the first (lowest) wins.
  assert calibration.nil_threshold(s_in, correct, s_out, 0.5) == 0.8
  # Prior 0.1: keeping links matters more; t = 0.8 scores 0.9*2/3 + 0.1*2/3 = 0.667,
  # t = -inf 0.9*2/3 + 0 = 0.6, t = 0.3 0.6 too, t = 0.5: 0.6 + 0.1/3 = 0.633.
  assert calibration.nil_threshold(s_in, correct, s_out, 0.1) == 0.8
  # Prior 0: never NIL.
  assert calibration.nil_threshold(s_in, correct, s_out, 0.0) == -np.inf


def test_split_documents_holds_out_a_fraction():
  docs = [Document(id=i, text="x", spans=()) for i in range(20)]
  train, held = train_linker.split_documents(docs, 0.1, seed=0)
  assert len(held) == 2 and len(train) == 18
  assert {d.id for d in train} | {d.id for d in held} == set(range(20))
  assert train_linker.split_documents(docs[:1], 0.1, 0) == (docs[:1], [])


def test_render_marks_linked_and_nil_spans():
  text = "Tom met <Ann>."
  spans = [{"start": 0, "end": 3, "title": "Tom Thumb", "nil": False, "score": 0.9},
           {"start": 8, "end": 13, "title": "Ann", "nil": True, "score": 0.1}]
  assert linker_lib.render(text, spans) == "[Tom -> Tom Thumb] met [<Ann> -> NIL]."
  html = linker_lib.render(text, spans, html=True)
  assert html.count("<mark") == 2 and "&lt;Ann&gt;" in html


# ------------------------------------------------------- trained, end to end
# `linked` (conftest.py): the chain's workdir with a trained linker, shared by the modules
# that link with it.


def test_linker_stage_writes_reports_and_calibration(linked):
  config, workdir, out = linked
  with open(os.path.join(workdir, "metrics.json")) as f:
    saved = json.load(f)
  for mode in ("fast", "full"):  # The chain has a cross-encoder: both modes.
    report = saved[f"test/linker {mode}"]
    for fam in ("mention_detection", "linking"):
      for match in ("strong", "weak"):
        for key in ("precision", "recall", "f1"):
          assert 0.0 <= report[f"{fam}/{match}/{key}"] <= 1.0
    assert report["documents"] == len(sources.load(config, workdir, documents=True).eval_documents["test"])
  with open(os.path.join(workdir, "linker", "calibration.json")) as f:
    cal = json.load(f)
  assert set(cal["nil_threshold"]) == {"fast", "full"}
  assert cal["heldout_documents"] >= 1
  assert saved["linker/train_spans"]["linking_examples"] > 0


def test_linker_starts_from_the_better_bi_encoder_on_held_out_spans(linked):
  """The chain distils: the linker measured both towers on its held-out documents' gold
  spans and started from the better one. Recomputed here through the other retrieval
  path (Catalogue.retrieve on the same mentions as Records)."""
  config, workdir, _ = linked
  with open(os.path.join(workdir, "metrics.json")) as f:
    start = json.load(f)["linker/start"]
  data = sources.load(config, workdir, documents=True)
  _, heldout = train_linker.split_documents(data.train_documents,
                                            config.linker.heldout_fraction, config.seed)
  mentions, _ = calibration.gold_mentions(heldout, config.data.max_context_len)
  assert start["held_out_gold_spans"] == len(mentions) > 0
  tok = load_lib.tokenizer(config.tokenizer)
  for stage in ("distill", "biencoder"):
    trained = load_lib.load(workdir, stage)
    top1 = retrieve.Catalogue(trained.model, tok, data.entities, config).retrieve(
        Records.of(mentions), 1).ids[:, 0]
    expected = float(np.mean(top1 == np.array([m.label_id for m in mentions])))
    assert start[f"{stage}/accuracy@1"] == pytest.approx(expected, abs=1e-9), stage
  better = ("distill" if start["distill/accuracy@1"] >= start["biencoder/accuracy@1"]
            else "biencoder")
  assert start["chosen"] == better


def test_a_distilled_bi_encoder_that_retrieves_worse_is_not_the_linkers_start(
    linked, monkeypatch, tmp_path):
  config, workdir, _ = linked
  data = sources.load(config, workdir, documents=True)
  _, heldout = train_linker.split_documents(data.train_documents,
                                            config.linker.heldout_fraction, config.seed)
  tok = load_lib.tokenizer(config.tokenizer)
  for distilled, plain, chosen in ((0.5, 0.6, "biencoder"), (0.6, 0.6, "distill"),
                                   (0.7, 0.6, "distill")):
    score = {"distill": distilled, "biencoder": plain}
    monkeypatch.setattr(train_linker, "held_out_accuracy",
                        lambda t, *a, score=score: score[t.identity["stage"]])
    writer = metric_writer.MetricWriter(str(tmp_path))
    student = train_linker.choose_student(config, workdir, tok, data.entities, heldout,
                                          None, writer)
    assert student.identity["stage"] == chosen
    with open(tmp_path / "metrics.json") as f:
      assert json.load(f)["linker/start"]["chosen"] == chosen


def test_loaded_linker_links_text_with_true_offsets(linked):
  config, workdir, out = linked
  linker = linker_lib.Linker.load(workdir, overrides={"linker.mention_threshold": -1e9})
  text = "Later that year, somebody travelled far.\nA second line."
  (spans,) = linker.link([text])
  assert spans, "with the threshold at -inf every text has spans"
  for r in spans:
    assert text[r["start"]:r["end"]] == r["mention"]
    assert set(r) == {"start", "end", "mention", "entity_id", "title", "score", "nil"}
    assert r["entity_id"] in set(linker.index.ids.tolist())
  ends = sorted((r["start"], r["end"]) for r in spans)
  assert all(e0 <= s1 for (_, e0), (s1, _) in zip(ends, ends[1:]))  # No overlaps.
  # The same spans, disambiguated directly, get the same entities and scores.
  again = linker.disambiguate([linker_lib.mention_of(text, r["start"], r["end"], 64)
                               for r in spans])
  assert [a["entity_id"] for a in again] == [r["entity_id"] for r in spans]
  np.testing.assert_allclose([a["score"] for a in again], [r["score"] for r in spans],
                             rtol=1e-5)
  # The calibrated NIL threshold can be overridden: above every confidence, all NIL.
  strict = linker_lib.Linker.load(workdir, overrides={"linker.mention_threshold": -1e9,
                                                      "linker.nil_threshold.fast": 1.01})
  assert all(r["nil"] for r in strict.link([text])[0])
  assert linker.timings["encoding"] > 0 and linker.timings["search"] > 0
  # A calibrated joint cut (logit + alpha log confidence) decides for detected spans,
  # by hand from their logits; spans given by the caller keep the NIL threshold.
  logit_of = {(s, e): logit for s, e, logit in linker.detect([text])[0]}
  conf = np.array([r["score"] for r in spans])
  score = np.array([logit_of[(r["start"], r["end"])] for r in spans]) + 2.0 * np.log(conf)
  cut = float(np.median(score))
  joint = linker_lib.Linker(linker.config, linker.tok, linker.model, linker.index,
                            linker.entities, calibration={
                                "mention_threshold": -1e9, "nil_threshold": {"fast": 1.01},
                                "link_rule": {"fast": {"alpha": 2.0, "threshold": cut}}})
  got = joint.link([text])[0]
  assert [r["nil"] for r in got] == (score < cut).tolist()
  assert 0 < sum(r["nil"] for r in got) < len(got)
  assert all(r["nil"] for r in joint.disambiguate(again))
  # A NIL threshold asked for in the config replaces the calibrated cut.
  config = copy.deepcopy(joint.config)
  config.linker.nil_threshold.fast = 0.0  # Every confidence passes: nothing NIL.
  forced = linker_lib.Linker(config, joint.tok, joint.model, joint.index,
                             joint.entities, calibration=joint.calibration)
  assert not forced.link_rule and not any(r["nil"] for r in forced.link([text])[0])


def test_full_mode_reranks_with_the_cross_encoder(linked):
  _, workdir, _ = linked
  fast = linker_lib.Linker.load(workdir)
  full = linker_lib.Linker.load(workdir, mode="full")
  ms = [{"context_left": "It was said that ", "mention": "Gegwe",
         "context_right": " had always been faithful."}]
  a, b = fast.disambiguate(ms)[0], full.disambiguate(ms)[0]
  assert a["mention"] == b["mention"] == "Gegwe"
  assert full.timings["re-ranking"] > 0 and "re-ranking" not in fast.timings
  # A fast linker loads the cross-encoder when asked for full mode once.
  assert fast.disambiguate(ms, mode="full") == [b]
  with pytest.raises(ValueError, match="Full mode"):
    linker_lib.Linker(fast.config, fast.tok, fast.model, fast.index, fast.entities,
                      mode="full")
  # calibration.json stores "never NIL" (-inf) as null.
  never = linker_lib.Linker(fast.config, fast.tok, fast.model, fast.index, fast.entities,
                            calibration={"nil_threshold": {"fast": None, "full": 0.5}})
  assert never.nil_threshold == {"fast": -np.inf, "full": 0.5}


def test_full_mode_multiplies_with_the_bi_encoder_when_asked(linked):
  _, workdir, _ = linked
  full = linker_lib.Linker.load(workdir, mode="full")
  ms = [linker_lib._as_mention({"context_left": "It was said that ", "mention": "Gegwe",
                                "context_right": " had always been faithful."})]
  k = int(full.config.cross.k)
  bi_scores, bi_ids = full.candidates(ms, k)
  cross = full.rerank(ms, bi_ids)
  for w in (0.0, 1.5):
    full.config.cross.bi_weight = w
    ids, scores = full.scored(ms)
    want = ranking.product(cross, bi_scores, w)[0]
    order = np.argsort(-want, kind="stable")
    np.testing.assert_array_equal(ids[0], bi_ids[0][order])
    np.testing.assert_allclose(scores[0], want[order], rtol=1e-5)


def test_aligned_scores_follow_the_entities():
  ids = np.array([[7, 3, 5]])
  scores = np.array([[3.0, 2.0, 1.0]], np.float32)
  got = linker_lib.aligned(ids, scores, np.array([[5, 9, 7, -1]]))
  # 9 is not in the dense list: the row's lowest score; -1 is padding.
  np.testing.assert_array_equal(got, [[1.0, 1.0, 3.0, -np.inf]])


def test_missing_linker_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_linker"):
    linker_lib.Linker.load(str(tmp_path))


def test_cli_links_a_jsonl_and_skips_bad_lines(linked, tmp_path):
  config, workdir, _ = linked
  docs_path = os.path.join(workdir, "data", "test.docs.jsonl")
  with open(docs_path, "rb") as f:
    good = f.read().splitlines()[:3]
  with open(os.path.join(workdir, "metrics.json")) as f:
    before = json.load(f)
  # Named like the stage's evaluation set, whose report must survive.
  src = tmp_path / "test.jsonl"
  src.write_bytes(good[0] + b"\n" + b"not json\n" + good[1] + b"\n" + b"\xff\xfe\n"
                  + b'{"id": 7}\n' + good[2] + b"\n")
  dst = tmp_path / "out.jsonl"
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  proc = subprocess.run(
      [sys.executable, "-m", "blink_jax.link", f"--workdir={workdir}", f"--input={src}",
       f"--output={dst}", "--evaluate", "--batch_size=2"],
      capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test.jsonl:2:" in proc.stderr and "test.jsonl:4:" in proc.stderr
  assert "test.jsonl:5:" in proc.stderr
  lines = [json.loads(x) for x in dst.read_text().splitlines()]
  assert [x["id"] for x in lines] == [json.loads(g)["id"] for g in good]
  for x in lines:
    for r in x["entities"]:
      assert x["text"][r["start"]:r["end"]] == r["mention"]
  assert "skipped 3 bad lines" in proc.stdout
  with open(os.path.join(workdir, "metrics.json")) as f:
    after = json.load(f)
  assert "link/test/fast" in after
  assert {k: v for k, v in after.items() if k != "link/test/fast"} == before
  assert not os.path.exists(str(dst) + ".partial")
  # The log is the CLI's own: no Orbax restore detail (~35 lines), no JAX platform probing.
  info = [line for line in proc.stderr.splitlines() if re.match(r"I\d{4} ", line)]
  assert len(info) <= 4, info
  assert "Unable to initialize backend" not in proc.stderr


def _link_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
  """`python -m blink_jax.link ARGS` on one CPU device, as a user runs it."""
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", "blink_jax.link", *args], input=stdin,
                        stdin=None if stdin is not None else subprocess.DEVNULL,
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_cli_links_plain_text_from_stdin_and_from_a_txt_file(linked, tmp_path):
  _, workdir, _ = linked
  texts = "Later that year, Gegwe was often seen near the river.\n\n" \
          "It was said that Gegwe had always been faithful.\n"
  # Every span is kept (threshold -1e9), so that each text has some to check.
  args = (f"--workdir={workdir}", "--mention_threshold=-1e9")
  piped = _link_cli(*args, stdin=texts)
  assert piped.returncode == 0, piped.stderr[-3000:]
  rows = [json.loads(line) for line in piped.stdout.splitlines()]
  lines = texts.split("\n")
  assert [(r["line"], r["text"]) for r in rows] == [(1, lines[0]), (3, lines[2])]
  for r in rows:
    assert r["entities"]
    for e in r["entities"]:
      assert r["text"][e["start"]:e["end"]] == e["mention"]
  assert piped.stderr.splitlines()[-1] == "Linked 2 texts."  # stdout holds only the lines.
  # The same lines from a .txt file, into a file (resumable) and to stdout: the same bytes.
  txt = tmp_path / "texts.txt"
  txt.write_text(texts)
  dst = tmp_path / "linked.jsonl"
  to_file = _link_cli(*args, f"--input={txt}", f"--output={dst}")
  assert to_file.returncode == 0, to_file.stderr[-3000:]
  assert dst.read_text() == piped.stdout
  assert to_file.stdout == f"Linked 2 texts into {dst}.\n"
  to_stdout = _link_cli(*args, f"--input={txt}")
  assert to_stdout.stdout == piped.stdout


def test_cli_links_each_typed_line_at_once(linked):
  """Typed into a terminal, a text is linked when its line ends, not when a batch fills."""
  import select  # pylint: disable=g-import-not-at-top
  _, workdir, _ = linked
  terminal, typed = os.openpty()
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  run = subprocess.Popen([sys.executable, "-m", "blink_jax.link", f"--workdir={workdir}"],
                         stdin=typed, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd=REPO)
  os.close(typed)
  try:
    os.write(terminal, b"Later that year, Gegwe was often seen near the river.\n")
    ready, _, _ = select.select([run.stdout], [], [], 300)
    assert ready, "no output before the end of the input"
    row = json.loads(run.stdout.readline())
    assert (row["line"], row["text"]) == (1, "Later that year, Gegwe was often seen near "
                                             "the river.")
    os.write(terminal, b"\x04")  # Ctrl-D: the end of the input.
    _, err = run.communicate(timeout=300)
  finally:
    run.kill()
    os.close(terminal)
  assert run.returncode == 0, err[-3000:]
  assert err.decode().splitlines()[0] == (
      "Reading texts from the terminal, one per line; Ctrl-D ends.")


def test_cli_reports_a_bad_catalogue_in_one_line_or_skips_it(linked, tmp_path):
  _, workdir, _ = linked
  with open(os.path.join(workdir, "data", "entities.jsonl"), encoding="utf-8") as f:
    good = [json.loads(line) for line in f][:30]
  kb = tmp_path / "kb.jsonl"
  lines = [json.dumps(e) for e in good]
  lines.insert(3, json.dumps({**good[0], "title": "Another"}))  # Line 4: a duplicate id.
  lines.insert(7, json.dumps({"id": 10_000, "text": "No title."}))  # Line 8: no title.
  kb.write_text("\n".join(lines) + "\n")
  txt = tmp_path / "in.txt"
  txt.write_text("Later that year, Gegwe was often seen near the river.\n")
  # A linker without checkpoints: the catalogue must be checked before the model loads.
  bare = _private_workdir(workdir, tmp_path / "bare", checkpoints=False)
  failed = _link_cli(f"--workdir={bare}", f"--input={txt}", f"--entities={kb}")
  assert failed.returncode == 1 and "Traceback" not in failed.stderr
  assert failed.stderr.splitlines()[-1] == (
      f"error: {kb}:4: duplicate entity id {good[0]['id']} "
      "(--skip_bad skips the catalogue's bad lines)")
  own = _private_workdir(workdir, tmp_path / "own")
  skipped = _link_cli(f"--workdir={own}", f"--input={txt}", f"--entities={kb}",
                      "--skip_bad", "--mention_threshold=-1e9")
  assert skipped.returncode == 0, skipped.stderr[-3000:]
  assert f"{kb}:4: duplicate entity id {good[0]['id']} (duplicate_id); line skipped" in (
      skipped.stderr)
  assert f"{kb}:8: missing field 'title' (missing_field); line skipped" in skipped.stderr
  (row,) = [json.loads(line) for line in skipped.stdout.splitlines()]
  assert row["entities"]
  assert {e["entity_id"] for e in row["entities"]} <= {e["id"] for e in good}


def test_cli_killed_and_run_again_gives_the_same_bytes(linked, tmp_path):
  _, workdir, _ = linked
  with open(os.path.join(workdir, "data", "test.docs.jsonl"), encoding="utf-8") as f:
    docs = [json.loads(line) for line in f]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps({"id": i, "text": docs[i % len(docs)]["text"]}) + "\n"
                         for i in range(120)))
  args = (f"--workdir={workdir}", f"--input={src}", "--batch_size=2")
  ref = tmp_path / "reference.jsonl"
  assert _link_cli(*args, f"--output={ref}").returncode == 0
  out = tmp_path / "out.jsonl"
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
  run = subprocess.Popen([sys.executable, "-m", "blink_jax.link", *args, f"--output={out}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, cwd=REPO)
  state = Path(f"{out}.progress")
  while True:
    assert run.poll() is None, "the run ended before it could be killed"
    try:
      done = json.loads(state.read_text())["linked"]
    except (FileNotFoundError, ValueError):
      done = 0
    if done >= 10:
      break
    time.sleep(0.05)
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert not out.exists() and Path(f"{out}.partial").exists()
  resumed = _link_cli(*args, f"--output={out}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed at input line" in resumed.stdout
  assert out.read_bytes() == ref.read_bytes()


WIKIEL = os.path.join(os.path.dirname(REPO), "shared", "data", "wikiel")


@pytest.mark.skipif(not os.path.isdir(WIKIEL), reason="../shared/data/wikiel is absent")
def test_links_wikiel_documents_against_their_own_catalogue(linked, tmp_path):
  """Real documents (accents, NIL golds) against another catalogue than training's."""
  _, workdir, _ = linked
  linker = linker_lib.Linker.load(workdir, entities=os.path.join(WIKIEL, "entities.jsonl"))
  assert len(linker.index) > 13000
  docs = jsonl.read_documents(os.path.join(WIKIEL, "KORE50.docs.jsonl"))[:5]
  report = evaluate.documents_report(linker, docs, "fast")
  assert report["documents"] == 5
  assert report["mention_detection/strong/num_gold"] == sum(len(d.spans) for d in docs)
  for r in linker.link([docs[0].text])[0]:
    assert docs[0].text[r["start"]:r["end"]] == r["mention"]
    assert r["entity_id"] in set(linker.index.ids.tolist())
  # The cached index is reused by the next load.
  cached = [d for d in os.listdir(os.path.join(workdir, "linker")) if d.startswith("index-")]
  assert len(cached) == 1
