"""The end-to-end linker: text in, linked entity spans out.

  linker = Linker.load(workdir)                  # after --config.mode=train_linker
  linker.link(["Defo bore the emblem of a gold hammer."])
  -> [[{"start": 0, "end": 4, "mention": "Defo", "entity_id": 17, "title": "Defo",
        "score": 3.1, "nil": False}]]
  linker.disambiguate([{"context_left": "", "mention": "Defo",
                        "context_right": " bore the emblem ..."}])

entity_id is the catalogue's id as given (17, or "Q42" for a catalogue of string ids),
and a "url" follows the title when the catalogue has one for that entity.

Three steps per batch of texts:
  1. Mention detection: each text's word-piece windows through the context
     tower and its span head (`models/mention_detection.py`); spans whose
     logit passes the calibrated mention threshold, overlaps resolved greedily
     by logit (`data/documents.py`).
  2. Retrieval: each span as a BLINK mention ([CLS] left [unused0] mention
     [unused1] right [SEP]) through the context tower, top k from the index.
  3. Fast mode takes the bi-encoder's best; full mode re-ranks the top
     `cross.k` with the cross-encoder.
`score` is the best candidate's softmax probability among the mode's
candidates; a span scoring below its mode's calibrated NIL threshold comes
back with `nil: True` (and the best candidate, for inspection). With
`top_k=K`, each span also carries its best K candidates with their
probability and raw scores (bi-encoder, and cross-encoder in full mode), for
re-ranking downstream; the fields are defined in `inference/results.py`.

Every model function is compiled once per Linker and fed fixed-size batches,
so a stream of calls (the CLI) does not recompile.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from blink_jax import config_utils
from blink_jax import exact_search
from blink_jax import index as index_lib
from blink_jax import sharding
from blink_jax import storage
from blink_jax import tokenization
from blink_jax import workdir as workdir_lib
from blink_jax.data import documents
from blink_jax.data import jsonl
from blink_jax.data import pipeline
from blink_jax.data import sources
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records
from blink_jax.inference import encode
from blink_jax.inference import load as load_lib
from blink_jax.inference import ranking
from blink_jax.inference import rerank as rerank_lib
from blink_jax.inference import results
from blink_jax.inference import retrieve

MODES = ("fast", "full")
# Characters of context kept on each side of a span before tokenizing: far
# more than max_context_len word pieces need, and it keeps a long document
# from being tokenized once per mention.
_CONTEXT_CHARS_PER_PIECE = 12


def mention_of(text: str, start: int, end: int, max_pieces: int) -> Mention:
  """The BLINK mention of text[start:end], its context trimmed to what can be used."""
  reach = max_pieces * _CONTEXT_CHARS_PER_PIECE
  return Mention(context_left=text[max(0, start - reach):start], mention=text[start:end],
                 context_right=text[end:end + reach], label_id=jsonl.NIL_ID)


def _as_mention(m: Any) -> Mention:
  if isinstance(m, Mention):
    return m
  if isinstance(m, dict):
    try:
      return Mention(context_left=m.get("context_left", ""), mention=m["mention"],
                     context_right=m.get("context_right", ""),
                     label_id=m.get("label_id", jsonl.NIL_ID), world=m.get("world"))
    except KeyError:
      raise ValueError(f"A mention needs at least a 'mention' key, got {sorted(m)}.") from None
  raise TypeError(f"Expected a Mention or a dict, got {type(m).__name__}.")


@dataclasses.dataclass(frozen=True)
class Ranking:
  """Each mention's candidates under one mode, best first (padding: id -1, score -inf)."""
  ids: np.ndarray           # [N, K] entity ids.
  scores: np.ndarray        # [N, K] the mode's ranking scores.
  bi_scores: np.ndarray     # [N, K] bi-encoder dot products; NaN: not retrieved by it.
  cross_scores: np.ndarray | None  # [N, K] cross-encoder logits (full mode only).


class Linker:
  """A trained linker: mention detector, bi-encoder, index, optional cross-encoder."""

  def __init__(self, config: ml_collections.ConfigDict, tok: tokenization.Tokenizer,
               model, index: index_lib.Index, entities: Records[Entity], *,
               cross=None, calibration: dict | None = None, mode: str = "fast",
               mesh=None, workdir: str | None = None):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    self.config, self.tok, self.model, self.index = config, tok, model, index
    self.entities, self.cross, self.mode = entities, cross, mode
    self.mesh = mesh or sharding.make_mesh(config.get("mesh"))
    cal = self.calibration = calibration or {}
    lc = config.linker
    self.mention_threshold = float(cal.get("mention_threshold", 0.0))
    # JSON has no -inf: a stored null means "never NIL".
    stored = cal.get("nil_threshold") or {}
    self.nil_threshold = {m: -np.inf if stored.get(m) is None else float(stored[m])
                          for m in MODES}
    # Per mode, {"alpha", "threshold"}: detected spans are linked on
    # logit + alpha * log(confidence) (inference/calibration.py); else on confidence.
    self.link_rule = dict(cal.get("link_rule") or {})
    for m, t in (lc.get("nil_threshold") or {}).items():  # Config overrides.
      if t is not None:
        self.nil_threshold[m] = float(t)
        self.link_rule.pop(m, None)  # A NIL threshold asked for is the one used.
    if lc.get("mention_threshold") is not None:
      self.mention_threshold = float(lc.mention_threshold)
    self.width_bonus = float(cal.get("width_bonus", 0.0))
    if lc.get("width_bonus") is not None:
      self.width_bonus = float(lc.width_bonus)
    # Seconds spent per phase (bench/link.py reads them); a phase timed inside
    # another is subtracted from it, so the phases add up to the total.
    self.timings: collections.Counter = collections.Counter()
    self._detect = encode.tower_fn(model, self.mesh)
    self._embed = encode.tower_fn(model.context_encoder, self.mesh)
    self._score = (encode.tower_fn(cross, self.mesh) if cross is not None else None)
    self._workdir = workdir  # Where to find the cross-encoder on demand.
    if mode == "full":
      self._cross_scorer()  # Fail now, not on the first text.

  # ------------------------------------------------------------------- load
  @classmethod
  def load(cls, workdir: str, *, mode: str = "fast", entities: str | None = None,
           overrides: dict | None = None, mesh=None) -> "Linker":
    """The linker trained in WORKDIR (config, checkpoint, index, calibration).

    `entities`: a catalogue jsonl to link against instead of the training
    catalogue; it is encoded once with the linker's entity tower and the index
    cached in WORKDIR/linker/index-<digest>. `overrides` update the stored
    config (e.g. {"linker": {"nil_threshold": {"fast": 2.0}}}).
    """
    config = workdir_lib.load_config(workdir, "linker")
    if overrides:
      config.update_from_flattened_dict(config_utils.flatten(overrides))
    # The catalogue is read (and each line checked) before the model loads: a bad line is
    # reported without first waiting for the checkpoint.
    if entities:
      catalogue = jsonl.open_entities(entities, skip_bad=bool(config.data.get("skip_bad")))
    else:
      catalogue = sources.load(config, workdir).entities
    mesh = mesh or sharding.make_mesh(config.get("mesh"))
    trained = load_lib.load(workdir, "linker", mesh)
    tok = load_lib.tokenizer(config.tokenizer)
    if entities:
      index = index_for(config, workdir, trained, tok, entities, catalogue, mesh)
    else:
      index = index_lib.Index.load(workdir_lib.linker_index_dir(workdir), mesh=mesh,
                                   expect_model=trained.identity)
    calibration = {}
    cal_path = workdir_lib.calibration_path(workdir)
    if storage.exists(cal_path):
      calibration = storage.read_json(cal_path)
    return cls(config, tok, trained.model, index, catalogue, calibration=calibration,
               mode=mode, mesh=mesh, workdir=workdir)

  def _cross_scorer(self):
    """The compiled cross-encoder; loaded from the workdir on first use."""
    if self._score is None and self._workdir is not None:
      try:
        trained = load_lib.load(self._workdir, "crossencoder", self.mesh)
      except FileNotFoundError:
        pass
      else:
        calibrated = self.calibration.get("crossencoder")
        if calibrated is not None and calibrated != trained.identity:
          raise workdir_lib.StaleArtifactError(
              f"The linker's full-mode NIL threshold was calibrated with cross-encoder "
              f"{calibrated}, the workdir now holds {trained.identity}: retrain the linker "
              "(--config.mode=train_linker) or link in fast mode.")
        self.cross = trained.model
        self._score = encode.tower_fn(self.cross, self.mesh)
    if self._score is None:
      raise ValueError("Full mode needs a trained cross-encoder "
                       "(--config.mode=train_crossencoder).")
    return self._score

  def load_full_mode(self) -> None:
    """Loads the cross-encoder now rather than on the first full-mode call; raises
    ValueError (none trained) or StaleArtifactError (not the calibrated one)."""
    self._cross_scorer()

  def warm_up(self, modes: Sequence[str] = ("fast",)) -> None:
    """Compiles every batch shape that linking in `modes` can use.

    A server calls this before it reports ready, so that no request waits for
    XLA. The model functions see row counts padded to powers of two
    (`encode.encode`) and the exact index pads its queries the same way, so
    one call per power of two up to each batch size covers every shape.
    """
    lc, cc, data = self.config.linker, self.config.cross, self.config.data
    dummy = Mention(context_left="", mention="warm up", context_right="",
                    label_id=jsonl.NIL_ID)
    repeat = lambda batch: lambda rows: _tile(batch, len(rows))

    def warm(fn, tokens, batch_size, inputs=("ids", "mask")):
      for n in _call_sizes(batch_size, self.mesh.size):
        encode.encode(fn, repeat(tokens), n, batch_size=batch_size, mesh=self.mesh,
                      desc="warm-up", inputs=inputs)

    with self._timed("warm-up"):
      warm(self._detect, self.tok.encode_texts(["warm up"], lc.max_len), lc.batch_size)
      warm(self._embed, self.tok.mentions([dummy], data.max_context_len),
           self.config.eval.batch_size)
      for mode in modes:
        self._check(mode, 0)
        k = self.candidate_count(mode)
        for n in _call_sizes(exact_search.QUERY_CHUNK, 1):
          self.index.search(np.zeros((n, self.index.dim), np.float32), k)
        if mode == "full":
          first = np.full((1, k), self.entities.labels[0], np.int64)
          pairs = pipeline.PairBuilder(self.tok, self.entities, Records.of([dummy]), first,
                                       max_context_len=cc.max_context_len,
                                       max_entity_len=cc.max_entity_len)
          warm(self._cross_scorer(), pairs.pairs(np.zeros(1, int), np.zeros(1, int))[0],
               cc.eval_batch_size, inputs=("ids", "mask", "segment_ids"))
    self.timings.clear()  # Warm-up is not linking: keep the phases' figures clean.

  @contextlib.contextmanager
  def _timed(self, phase: str):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.timings[phase] += time.perf_counter() - t

  def _timer(self, phase: str, *, inside: str):
    """Decorator: time `fn` as `phase`, and take that time out of `inside`."""
    def wrap(fn):
      @functools.wraps(fn)
      def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
          return fn(*args, **kwargs)
        finally:
          dt = time.perf_counter() - t
          self.timings[phase] += dt
          self.timings[inside] -= dt
      return timed
    return wrap

  # ------------------------------------------------------------ mentions
  def detect(self, texts: Sequence[str], *, threshold: float | None = None,
             windows: documents.Windows | None = None) -> list[list[tuple[int, int, float]]]:
    """Non-overlapping (start, end, logit) spans of each text."""
    lc = self.config.linker
    if windows is None:
      with self._timed("tokenization"):
        windows = documents.make_windows(self.tok, texts, max_len=lc.max_len,
                                         max_width=lc.max_width)
    logits = self.span_logits(windows)
    thr = self.mention_threshold if threshold is None else threshold
    return documents.decode_spans(windows, logits, thr, len(texts), self.width_bonus)

  def span_logits(self, windows: documents.Windows) -> np.ndarray:
    """[N, T, W] span logits of some windows."""
    if not len(windows):
      return np.zeros(windows.valid.shape, np.float32)
    with self._timed("encoding"):
      return encode.encode(self._detect, windows.tokens.take,
                             len(windows), batch_size=self.config.linker.batch_size,
                             mesh=self.mesh, desc="mentions")

  # ------------------------------------------------------------- linking
  def candidates(self, mentions: Sequence[Mention], k: int,
                 worlds: Sequence[str | None] | None = None):
    """(scores [N, k], entity ids [N, k]) of the bi-encoder."""
    ms = Records.of(list(mentions))
    max_len = self.config.data.max_context_len

    @self._timer("tokenization", inside="encoding")
    def tokenize(rows):
      return self.tok.mentions(ms.take(rows), max_len)

    with self._timed("encoding"):
      q = encode.encode(self._embed, tokenize, len(ms),
                          batch_size=self.config.eval.batch_size, mesh=self.mesh,
                          desc="retrieval")
    with self._timed("search"):
      return self.index.search(q, k, worlds)

  def _hybrid(self, mentions: Sequence[Mention], dense_ids: np.ndarray, worlds) -> np.ndarray:
    """The dense candidates fused with the lexical views, as configured (else as they are)."""
    r = self.config.get("retrieval")
    if r is None or not r.hybrid:
      return dense_ids
    k = dense_ids.shape[1]
    with self._timed("search"):
      lex = retrieve.lexical_index(self.entities, int(r.window))
      ms = Records.of([m if worlds is None else dataclasses.replace(m, world=w)
                       for m, w in zip(mentions, worlds or [None] * len(mentions))])
      views = lex.rankings(ms, k)
      return ranking.rrf([dense_ids, views["text"], views["names"]], ms.labels, k,
                         weights=r.weights).ids

  def rerank(self, mentions: Sequence[Mention], cand_ids: np.ndarray) -> np.ndarray:
    """Cross-encoder scores [N, K] of each mention's candidates (-inf on padding)."""
    cc = self.config.cross
    builder = pipeline.PairBuilder(self.tok, self.entities, Records.of(list(mentions)),
                                   cand_ids, max_context_len=cc.max_context_len,
                                   max_entity_len=cc.max_entity_len)
    builder.pairs = self._timer("tokenization", inside="re-ranking")(builder.pairs)
    with self._timed("re-ranking"):
      return rerank_lib.score_candidates(self._cross_scorer(), builder,
                                         batch_size=cc.eval_batch_size,
                                         mesh=self.mesh, desc="re-ranking")

  def candidate_count(self, mode: str | None = None) -> int:
    """How many candidates each mention gets in `mode`: the most `top_k` can ask for."""
    mode = mode or self.mode
    return int(self.config.cross.k if mode == "full" else self.config.linker.k)

  def ranked(self, mentions: Sequence[Mention], worlds=None, mode: str | None = None
             ) -> Ranking:
    """Each mention's candidates, best first, with every model's scores.

    Fast mode: the bi-encoder's top `linker.k`; full mode: its top `cross.k`
    (fused with the lexical views when `retrieval.hybrid`, as the cross-encoder
    was trained) re-ranked by the cross-encoder.
    """
    mode = mode or self.mode
    k = self.candidate_count(mode)
    if not len(mentions):
      empty = np.zeros((0, k), np.float32)
      return Ranking(np.zeros((0, k), np.int64), empty, empty,
                     empty if mode == "full" else None)
    scores, ids = self.candidates(mentions, k, worlds)
    if mode != "full":
      return Ranking(ids, scores, scores, None)
    bi_ids, bi_scores = ids, scores
    ids = self._hybrid(mentions, ids, worlds)
    cross = self.rerank(mentions, ids)
    bi = aligned(bi_ids, bi_scores, ids)
    scores = ranking.product(cross, bi, float(self.config.cross.get("bi_weight", 0.0)))
    order = np.argsort(-scores, 1, kind="stable")
    take = lambda x: np.take_along_axis(x, order, 1)
    # A lexical-only candidate has no bi-encoder score of its own (the product
    # used its row's lowest): NaN, so the output says "none" rather than a floor.
    retrieved = (ids[:, :, None] == bi_ids[:, None, :]).any(2)
    return Ranking(take(ids), take(scores), take(np.where(retrieved, bi, np.nan)), take(cross))

  def scored(self, mentions: Sequence[Mention], worlds=None, mode: str | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(entity ids [N, K], scores [N, K]) of each mention's candidates, best first
    (see `ranked`)."""
    r = self.ranked(mentions, worlds, mode)
    return r.ids, r.scores

  def entity_fields(self, labels: Sequence[int] | np.ndarray) -> list[dict]:
    """{"entity_id", "title"[, "url"]} of each entity label, as the catalogue gives them.

    entity_id is the catalogue's id with its JSON type (42 or "Q42"); url only when the
    catalogue has one. A label with no entity (-1: no candidate) gives entity_id -1.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    keys, titles, urls = (self.index.key_of(labels), self.index.title_of(labels),
                          self.index.url_of(labels))
    out = []
    for label, key, title, url in zip(labels.tolist(), keys, titles, urls):
      fields = {"entity_id": label if key is None else key, "title": title}
      if url is not None:
        fields["url"] = url
      out.append(fields)
    return out

  def _results(self, mentions, ranked: Ranking, mode, top_k: int, spans=None,
               logits=None) -> list[dict]:
    """`logits`: each detected span's mention logit (None for spans given by the
    caller), which the mode's `link_rule` reads."""
    probs = probabilities(ranked.scores)
    conf = probs[:, 0] if len(probs) else np.zeros(0, np.float32)
    top = ranked.ids[:, 0] if len(ranked.ids) else np.zeros(0, np.int64)
    entities = self.entity_fields(top)
    rule = self.link_rule.get(mode) if logits is not None else None
    if rule is None:
      linked = conf >= self.nil_threshold[mode]
    else:
      linked = link_score(np.asarray(logits), conf, rule["alpha"]) >= rule["threshold"]
    out = []
    for i, m in enumerate(mentions):
      start, end = (None, None) if spans is None else spans[i]
      out.append(results.span(m.mention, entities[i], conf[i],
                              not linked[i] or top[i] < 0, start=start, end=end))
    if top_k:
      for r, cands in zip(out, self._candidates(ranked, probs, top_k)):
        r["candidates"] = cands
    return out

  def _candidates(self, ranked: Ranking, probs: np.ndarray, top_k: int) -> list[list[dict]]:
    """Each mention's first `top_k` candidates (padding left out)."""
    ids = ranked.ids[:, :top_k]
    k = ids.shape[1]
    fields = self.entity_fields(ids.reshape(-1))
    out = []
    for i in range(len(ids)):
      out.append([results.candidate(
          fields[i * k + j], probs[i, j], ranked.bi_scores[i, j],
          None if ranked.cross_scores is None else ranked.cross_scores[i, j])
                  for j in range(ids.shape[1]) if ids[i, j] >= 0])
    return out

  def _check(self, mode: str, top_k: int) -> None:
    """A clear error for a bad mode or top_k before any work (the server's 422s)."""
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    k = self.candidate_count(mode)
    if not 0 <= top_k <= k:
      field = "cross.k" if mode == "full" else "linker.k"
      raise ValueError(f"top_k must be between 0 and {k} (the {mode} mode's candidates, "
                       f"config {field}), got {top_k}.")

  def disambiguate(self, mentions: Sequence[Any], *, mode: str | None = None,
                   top_k: int = 0) -> list[dict]:
    """Links spans the caller already has: Mentions or dicts with context_left,
    mention, context_right (and optionally world). `top_k` > 0 adds each
    span's best `top_k` candidates (`results.candidate`) as "candidates"."""
    mode = mode or self.mode
    self._check(mode, top_k)
    ms = [_as_mention(m) for m in mentions]
    worlds = [m.world for m in ms]
    worlds = None if set(worlds) <= {None} else worlds
    return self._results(ms, self.ranked(ms, worlds, mode), mode, top_k)

  def link(self, texts: Sequence[str], *, worlds: Sequence[str | None] | None = None,
           mode: str | None = None, top_k: int = 0) -> list[list[dict]]:
    """Detected and linked spans of each text; offsets index the original text.
    `top_k` > 0 adds each span's best `top_k` candidates, as `disambiguate`."""
    mode = mode or self.mode
    self._check(mode, top_k)
    spans = self.detect(texts)
    flat, where, logits = [], [], []
    max_len = self.config.data.max_context_len
    for t, text_spans in enumerate(spans):
      for s, e, logit in text_spans:
        flat.append(mention_of(texts[t], s, e, max_len))
        where.append((t, s, e))
        logits.append(logit)
    span_worlds = None if worlds is None else [worlds[t] for t, _, _ in where]
    ranked = self.ranked(flat, span_worlds, mode)
    found = self._results(flat, ranked, mode, top_k, spans=[w[1:] for w in where],
                          logits=np.asarray(logits, np.float64))
    out: list[list[dict]] = [[] for _ in texts]
    for (t, _, _), r in zip(where, found):
      out[t].append(r)
    return out

  def render(self, text: str, *, html: bool = False, mode: str | None = None) -> str:
    """One text, linked and marked up (see `render`)."""
    return render(text, self.link([text], mode=mode)[0], html=html)


def _call_sizes(batch_size: int, multiple: int) -> list[int]:
  """Row counts whose calls, padded by `encode.encode`, reach every shape it uses
  with `batch_size` rows per call on `multiple` devices: multiple * 2^j, and
  the batch itself."""
  batch = -(-batch_size // multiple) * multiple
  sizes, n = [], multiple
  while n < batch:
    sizes.append(n)
    n *= 2
  return sizes + [batch]


def _tile(batch: tokenization.TokenBatch, n: int) -> tokenization.TokenBatch:
  """n copies of a one-row batch."""
  return dataclasses.replace(batch, **{f.name: np.repeat(getattr(batch, f.name), n, 0)
                                       for f in dataclasses.fields(batch)})


def render(text: str, spans: Sequence[dict], *, html: bool = False) -> str:
  """`text` with each linked span marked: [mention -> title] (or NIL), or as HTML
  with highlighted spans (a notebook shows it with IPython.display.HTML)."""
  import html as html_lib  # pylint: disable=g-import-not-at-top
  esc = html_lib.escape if html else (lambda x: x)
  out, pos = [], 0
  for r in sorted(spans, key=lambda r: r["start"]):
    out.append(esc(text[pos:r["start"]]))
    target = "NIL" if r["nil"] else r["title"]
    mention = text[r["start"]:r["end"]]
    if html:
      colour = "#eee" if r["nil"] else "#ffe08a"
      out.append(f'<mark style="background:{colour}" title="{esc(str(target))} '
                 f'({r["score"]:.2f})">{esc(mention)}<sub>{esc(str(target))}</sub></mark>')
    else:
      out.append(f"[{mention} -> {target}]")
    pos = r["end"]
  out.append(esc(text[pos:]))
  return "".join(out)


def aligned(ids: np.ndarray, scores: np.ndarray, other: np.ndarray) -> np.ndarray:
  """The scores [N, K'] of the entities `other` [N, K'] in the ranked lists (ids, scores).

  An entity that the list lacks (a lexical-only candidate of hybrid retrieval)
  gets its row's lowest score; padding (-1) gets -inf.
  """
  if other is ids:
    return scores
  hit = other[:, :, None] == ids[:, None, :]
  floor = np.min(np.where(np.isfinite(scores), scores, np.inf), axis=1, keepdims=True)
  floor = np.where(np.isfinite(floor), floor, 0.0)
  out = np.where(hit.any(2), np.take_along_axis(scores, hit.argmax(2), 1), floor)
  return np.where(other >= 0, out, -np.inf).astype(np.float32)


def probabilities(scores: np.ndarray) -> np.ndarray:
  """[N, K] softmax of each row's scores (best first); rows without a finite
  first score (no candidate at all, e.g. an empty world) are all 0."""
  if not len(scores):
    return np.zeros(np.shape(scores), np.float32)
  s = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float64)
  # Shifted by the first (best) score: exp(0) = 1 exactly, so column 0 is
  # 1 / sum, as `confidence` has always computed it.
  first = s[:, :1]
  has = np.isfinite(first[:, 0])
  e = np.exp(s - np.where(np.isfinite(first), first, 0.0))
  with np.errstate(divide="ignore", invalid="ignore"):  # Those rows are discarded.
    p = e / e.sum(1, keepdims=True)
  return np.where(has[:, None], p, 0.0).astype(np.float32)


def link_score(logit: np.ndarray, conf: np.ndarray, alpha: float | None) -> np.ndarray:
  """What a detected span's link is cut on: its confidence (alpha None), or its
  mention logit + alpha * log(confidence) (the calibrated `link_rule`)."""
  conf = np.asarray(conf, np.float64)
  if alpha is None:
    return conf
  return np.asarray(logit, np.float64) + alpha * np.log(np.maximum(conf, 1e-30))


def confidence(scores: np.ndarray) -> np.ndarray:
  """[N] softmax probability of each row's first (best) candidate among its K.

  The NIL decision reads this rather than the raw score: raw dot products
  shift from world to world (higher on worlds the model trained on), while a
  probability relative to the other candidates transfers better.
  """
  if not len(scores):
    return np.zeros(0, np.float32)
  return probabilities(scores)[:, 0]


def make_index(config, entities: Records[Entity],
               embeddings: np.ndarray | sharding.ShardedRows, mesh,
               model_id: dict) -> index_lib.Index:
  """The linker's index of `entities`, whose `embeddings` its (frozen) entity tower made.

  It keeps each entity's title, url and id as given, which the linker's results carry.
  """
  records = entities.take(np.arange(len(entities)))
  ic = config.index
  return index_lib.Index.build(
      embeddings, entities.labels, [e.title for e in records], entities.worlds,
      backend=ic.backend, storage=ic.storage, mesh=mesh, k=ic.k,
      target_recall=ic.target_recall, scann=dict(ic.scann), model=model_id,
      seed=config.seed, keys=entities.keys, urls=[e.url for e in records])


def index_for(config, workdir: str, trained: load_lib.Trained, tok: tokenization.Tokenizer,
              path: str, catalogue: Records[Entity], mesh) -> index_lib.Index:
  """An index of the catalogue at `path` by the linker's entity tower, cached.

  The cache is keyed to the file (path, size, mtime) and the linker's
  identity; a changed file or model is encoded again.
  """
  size, mtime_ns = storage.getsize_and_mtime(path)
  key = workdir_lib.digest([storage.abspath(path), size, mtime_ns, trained.identity])
  directory = os.path.join(workdir_lib.stage_dir(workdir, "linker"), f"index-{key}")
  try:
    return index_lib.Index.load(directory, mesh=mesh, expect_model=trained.identity)
  except (FileNotFoundError, index_lib.IndexLoadError):
    pass
  logging.info("Encoding %d entities of %s for the linker's index.", len(catalogue), path)
  emb = encode.embed_catalogue(trained.model, tok, catalogue, config, mesh)
  index = make_index(config, catalogue, emb, mesh, trained.identity)
  index.save(directory)
  return index
