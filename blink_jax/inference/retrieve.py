"""Candidate retrieval: dense (a catalogue embedded once per model, exact top-k
per world), and hybrid (dense fused with lexical) when config.retrieval says so.

    cat = retrieve.catalogue(model, tok, entities, config, mesh, model_id=identity)
    cands = cat.retrieve(mentions, k)          # Candidates: ids, scores, labels
    cands = retrieve.retriever(cat, config).retrieve(mentions, k)   # as configured

Every path that ranks entities for mentions goes through here: evaluation
(recall@k), hard-negative mining, the stored candidates of the cross-encoder
and distillation, the linker's training examples. Zeshel-style data ranks
each mention within its own world. A catalogue embedded by a trained model
(known by its identity) is kept for the rest of the process, so evaluation
sets, stages and mining share one encode of it.
"""

from __future__ import annotations

import collections

import numpy as np
from jax.sharding import Mesh

from blink_jax import index as index_lib
from blink_jax import tokenization
from blink_jax import workdir as workdir_lib
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import encode
from blink_jax.inference import lexical
from blink_jax.inference import ranking
from blink_jax.inference.ranking import Candidates

_CACHE_SIZE = 2  # Embedded catalogues kept per process (each holds an index).
_cache: collections.OrderedDict = collections.OrderedDict()


class Catalogue:
  """A model's embeddings of a catalogue, in an exact index over all devices."""

  def __init__(self, model, tok: tokenization.Tokenizer, entities: Records[Entity],
               config, mesh: Mesh | None = None, embeddings: np.ndarray | None = None):
    self.model, self.tok, self.entities = model, tok, entities
    self.config, self.mesh = config, mesh
    self.embeddings = (encode.embed_entities(model, tok, entities, config, mesh)
                       if embeddings is None else embeddings)
    self.index = index_lib.Index.build(self.embeddings, entities.labels, None,
                                       entities.worlds, backend="exact", mesh=mesh)

  def search(self, queries: np.ndarray, worlds, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N, k], entity ids [N, k]) of query embeddings, within `worlds` if given."""
    if worlds is not None and set(worlds) <= {None}:
      worlds = None
    return self.index.search(queries, k, None if worlds is None else list(worlds))

  def retrieve(self, mentions: Records[Mention], k: int) -> Candidates:
    """Each mention's top k (within its world) by the model."""
    q = encode.embed_mentions(self.model, self.tok, mentions, self.config, self.mesh)
    scores, ids = self.search(q, mentions.worlds, k)
    return Candidates(ids=ids.astype(np.int64), scores=scores.astype(np.float32),
                      labels=mentions.labels.astype(np.int64))


def catalogue(model, tok: tokenization.Tokenizer, entities: Records[Entity], config,
              mesh: Mesh | None = None, *, model_id: dict | None = None) -> Catalogue:
  """`Catalogue(...)`, reused within the process when `model_id` names a trained model.

  The key is the model's identity, the catalogue's ids and the entity length:
  what the embeddings depend on. An untrained model (no id) is never cached.
  """
  if model_id is None:
    return Catalogue(model, tok, entities, config, mesh)
  key = workdir_lib.digest([model_id, workdir_lib.fingerprint_of(entities.labels),
                            config.data.max_entity_len])
  if key in _cache:
    _cache.move_to_end(key)
    return _cache[key]
  cat = Catalogue(model, tok, entities, config, mesh)
  _cache[key] = cat
  while len(_cache) > _CACHE_SIZE:
    _cache.popitem(last=False)
  return cat


_lexical_cache: collections.OrderedDict = collections.OrderedDict()


def lexical_index(entities: Records[Entity], window: int) -> lexical.Lexical:
  """`lexical.Lexical(entities)`, built once per catalogue and window in a process."""
  key = (workdir_lib.fingerprint_of(entities.labels), window)
  if key not in _lexical_cache:
    _lexical_cache[key] = lexical.Lexical(entities, window=window)
    while len(_lexical_cache) > _CACHE_SIZE:
      _lexical_cache.popitem(last=False)
  return _lexical_cache[key]


class Hybrid:
  """Dense candidates fused with the lexical views (BM25 text, names) by reciprocal rank.

  Each retriever contributes its top k; `weights` are those of (dense, text, names).
  Scores of the result are fused scores, not dot products.
  """

  def __init__(self, dense: Catalogue, lex: lexical.Lexical, weights=(1.0, 1.0, 1.0)):
    self.dense, self.lexical, self.weights = dense, lex, tuple(weights)

  def retrieve(self, mentions: Records[Mention], k: int) -> Candidates:
    d = self.dense.retrieve(mentions, k)
    lex = self.lexical.rankings(mentions, k)
    return ranking.rrf([d.ids, lex["text"], lex["names"]], mentions.labels, k,
                       weights=self.weights)


def retriever(dense: Catalogue, config, *, hybrid: bool | None = None) -> Catalogue | Hybrid:
  """The candidate source over the dense catalogue `dense`: hybrid when `hybrid` (default
  `config.retrieval.hybrid`), fused as `config.retrieval` says."""
  r = config.get("retrieval")
  if hybrid is None:
    hybrid = r is not None and bool(r.hybrid)
  if r is None or not hybrid:
    return dense
  return Hybrid(dense, lexical_index(dense.entities, r.window), r.weights)
