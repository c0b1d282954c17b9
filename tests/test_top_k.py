"""Top-k candidates from the Linker (`top_k=`), and its warm-up, on a trained linker.

The candidate list is checked against what can be worked out by hand from
it: the first candidate is the linked entity with the span's score, scores
are probabilities (a softmax of the raw scores the list carries, summing to
one over the mode's candidates), best first, k respected.
"""

import jax
import numpy as np
import pytest

from blink_jax.inference import linker as linker_lib

TEXT = "Later that year, somebody travelled far.\nA second line."


@pytest.fixture(scope="module")
def fast(linker_workdir):
  # Every span candidate passes the threshold: texts have many spans to check.
  return linker_lib.Linker.load(linker_workdir, overrides={"linker.mention_threshold": -1e9})


@pytest.fixture(scope="module")
def full(linker_workdir):
  return linker_lib.Linker.load(linker_workdir, mode="full",
                                overrides={"linker.mention_threshold": -1e9})


def _softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x))
  return e / e.sum()


def test_fast_candidates_head_with_the_linked_entity(fast):
  k = fast.candidate_count("fast")
  plain = fast.link([TEXT])[0]
  (spans,) = fast.link([TEXT], top_k=k)
  assert spans and len(spans) == len(plain)
  for span, without in zip(spans, plain):
    cands = span.pop("candidates")
    assert span == without  # top_k adds candidates and changes nothing else.
    assert len(cands) == k  # The catalogue has more than k entities.
    assert set(cands[0]) == {"entity_id", "title", "score", "bi_score"}
    head = cands[0]
    assert (head["entity_id"], head["title"], head["score"]) == (
        span["entity_id"], span["title"], span["score"])
    bi = [c["bi_score"] for c in cands]
    assert bi == sorted(bi, reverse=True)  # Fast mode ranks by the bi-encoder.
    # Over all k candidates the scores are the softmax of the bi-encoder's.
    np.testing.assert_allclose([c["score"] for c in cands], _softmax(bi), rtol=1e-5)
    assert len({c["entity_id"] for c in cands}) == k
  # A smaller k is the head of the larger list.
  short = fast.link([TEXT], top_k=2)[0]
  assert [s["candidates"] for s in short] == [
      [dict(c) for c in s2["candidates"][:2]] for s2 in fast.link([TEXT], top_k=k)[0]]


def test_full_candidates_carry_both_models_scores(fast, full):
  k = full.candidate_count("full")
  ms = [{"context_left": "It was said that ", "mention": "Gegwe",
         "context_right": " had always been faithful."},
        {"context_left": "", "mention": "somebody", "context_right": " travelled far."}]
  plain = full.disambiguate(ms)
  out = full.disambiguate(ms, top_k=k)
  bi_list = fast.disambiguate(ms, top_k=fast.candidate_count("fast"))
  assert [{key: v for key, v in r.items() if key != "candidates"} for r in out] == plain
  for span, bi_span in zip(out, bi_list):
    cands = span["candidates"]
    assert len(cands) == k
    assert set(cands[0]) == {"entity_id", "title", "score", "bi_score", "cross_score"}
    assert (cands[0]["entity_id"], cands[0]["score"]) == (span["entity_id"], span["score"])
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)
    # Full mode re-ranks the bi-encoder's top k: the same entities, and each
    # keeps its bi-encoder score from the fast list.
    bi_of = {c["entity_id"]: c["bi_score"] for c in bi_span["candidates"]}
    assert {c["entity_id"] for c in cands} == {c["entity_id"] for c in bi_span["candidates"][:k]}
    for c in cands:
      np.testing.assert_allclose(c["bi_score"], bi_of[c["entity_id"]], rtol=1e-5)
    # The mode's score: log p_cross + bi_weight * log p_bi, as probabilities.
    w = float(full.config.cross.get("bi_weight", 0.0))
    cross, bi = np.array([c["cross_score"] for c in cands]), np.array(
        [c["bi_score"] for c in cands])
    want = _softmax(np.log(_softmax(cross)) + w * np.log(_softmax(bi)))
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6)


def test_top_k_out_of_range_is_a_clear_error(fast):
  k = fast.candidate_count("fast")
  with pytest.raises(ValueError, match=f"between 0 and {k} .*linker.k.*got {k + 1}"):
    fast.link([TEXT], top_k=k + 1)
  with pytest.raises(ValueError, match="got -1"):
    fast.disambiguate([{"mention": "x"}], top_k=-1)
  with pytest.raises(ValueError, match="mode must be one of"):
    fast.link([TEXT], mode="medium")


def test_warm_up_compiles_every_shape_linking_uses(linker_workdir):
  linker = linker_lib.Linker.load(linker_workdir, mode="full",
                                  overrides={"linker.mention_threshold": -1e9})
  compiled = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    # A compilation, or its executable read from the suite's compilation
    # cache (tests/conftest.py): either means a shape warm-up missed.
    if event in ("/jax/core/compile/backend_compile_duration",
                 "/jax/compilation_cache/cache_retrieval_time_sec"):
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    linker.warm_up(["fast", "full"])
    assert compiled, "warm-up compiled nothing: the listener does not see compilations"
    compiled.clear()
    # Texts from 1 to many windows, spans from none to many, both modes.
    texts = [TEXT, "", "x", " ".join([TEXT] * 40)] + [f"{TEXT} {i}" for i in range(9)]
    for n in (1, 2, 3, 5, len(texts)):
      for mode in ("fast", "full"):
        linker.link(texts[:n], mode=mode, top_k=2)
    linker.disambiguate([{"mention": "Gegwe"}] * 3, mode="full")
    assert compiled == []
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
