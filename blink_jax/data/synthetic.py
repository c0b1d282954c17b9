"""Procedural Zeshel-style worlds: a small zero-shot entity-linking benchmark from a seed.

Each world has its own catalogue of persons, places, guilds, artifacts and creatures, each with
attributes (role, home region, trait, allegiance, emblem, a carried object, a rival) written out
as a multi-sentence description. Mentions sit in 20-60 words of context on each side.

What makes it a benchmark rather than a lookup table:
  * Names are minted from syllables, and surface forms are shared: persons share first and
    family names with each other and with places ("Varn (river)"), and mentions often use only
    a first name, a family name or an epithet. Only the context tells such entities apart.
  * Contexts state the gold entity's attributes partly in the description's words and partly in
    paraphrase ("blacksmith" -> "forged blades at the anvil"), so BM25 scores them fairly but
    imperfectly, and a trained model can learn the paraphrase map, which all worlds share.
  * Distractor sentences about other entities of the same world add lexical noise.
  * Zero-shot: train and test worlds mint names from disjoint consonant sets, so no test name
    (or title) occurs anywhere in training text; `generate` checks this before returning.

Everything is drawn from numpy.random.default_rng seeded by (seed, split, world index): the same
config gives byte-identical files. Iteration never touches a set, whose order varies by process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from blink_jax import storage
from blink_jax.bm25 import tokenize
from blink_jax.data.jsonl import Document, Entity, Mention, Span, write_jsonl
from blink_jax.data.synthetic_lexicon import (
    ROLES, KIND_CYCLE, KIND_ATTRS, RIVAL_KINDS, WHERE, TRAITS, COLOURS, EMBLEMS,
    OBJECTS, EPITHETS, LEADS, FILLERS, DESC_FILLERS, P_CANONICAL, P_DISTRACTOR,
    MIN_CONTEXT_WORDS, MAX_CONTEXT_WORDS, STEM_FRACTION, ONSETS, CODAS, VOWELS)

FILES = {"entities": "entities.jsonl", "train_mentions": "train.mentions.jsonl",
         "test_mentions": "test.mentions.jsonl", "train_documents": "train.docs.jsonl",
         "test_documents": "test.docs.jsonl"}
MANIFEST = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size and seed of a synthetic corpus."""

  num_train_worlds: int = 4
  num_test_worlds: int = 2
  entities_per_world: int = 200
  mentions_per_entity: int = 4
  docs_per_world: int = 20
  seed: int = 0


@dataclasses.dataclass
class SyntheticCorpus:
  """A generated corpus; entity ids are global, assigned world by world from 0."""

  config: SyntheticConfig
  entities: list[Entity]
  train_mentions: list[Mention]
  test_mentions: list[Mention]
  train_documents: list[Document]
  test_documents: list[Document]
  train_worlds: list[str]
  test_worlds: list[str]
  name_parts: dict[str, list[str]]  # Every proper name minted for a world (for zero-shot checks).


# Bump whenever a change alters generated corpora: the manifest records it, so
# ensure_written regenerates stale files.
GENERATOR_VERSION = 3


def _strings(value) -> Iterator[str]:
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for k, v in value.items():
      yield from _strings(k)
      yield from _strings(v)
  elif isinstance(value, (tuple, list, frozenset, set)):
    for v in value:
      yield from _strings(v)


@functools.cache
def _vocab() -> frozenset[str]:
  """Every word of the module's tables and templates: names must never be one.

  Walking the module's own constants covers all template words without a
  second list to keep in sync.
  """
  words = set()
  for name, value in globals().items():
    if name.isupper() or name.startswith("_") and name[1:].isupper():
      for text in _strings(value):
        words.update(tokenize(text))
  return frozenset(words)


class _Rand:
  """Uniform draws served in blocks from one numpy Generator (a numpy call per draw is slow)."""

  def __init__(self, *seed: int):
    self._rng = np.random.default_rng(list(seed))
    self._buf: list[float] = []
    self._i = 0

  def uniform(self) -> float:
    if self._i == len(self._buf):
      self._buf, self._i = self._rng.random(4096).tolist(), 0
    self._i += 1
    return self._buf[self._i - 1]

  def below(self, n: int) -> int:
    return min(int(self.uniform() * n), n - 1)

  def pick(self, seq):
    return seq[self.below(len(seq))]

  def chance(self, p: float) -> bool:
    return self.uniform() < p

  def between(self, lo: int, hi: int) -> int:
    return lo + self.below(hi - lo + 1)

  def sample(self, seq, k: int) -> list:
    items = list(seq)
    for i in range(min(k, len(items))):  # Partial Fisher-Yates.
      j = i + self.below(len(items) - i)
      items[i], items[j] = items[j], items[i]
    return items[:k]


@dataclasses.dataclass
class _Ent:
  """An entity with the attributes its description and contexts are written from."""

  id: int
  kind: str
  name: str  # Full name without disambiguation ("Varn Oskel" or "Varn").
  parts: tuple[str, ...]  # (first, family) for persons, (stem,) otherwise.
  role: str
  region: str
  trait: str
  colour: str
  emblem: str
  obj: str
  pron: str  # "he", "she" or "it".
  epithet: str | None = None
  allegiance: _Ent | None = None
  rival: _Ent | None = None
  title: str = ""


def _a(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _poss(e: _Ent) -> str:
  return {"he": "his", "she": "her", "it": "its"}[e.pron]


def _mint(rand: _Rand, split: str, taken: set[str]) -> str:
  """A fresh syllable name for `split` that is neither taken nor an ordinary word."""
  while True:
    n_syll = 1 + (rand.uniform() > 0.15) + (rand.uniform() > 0.8)
    name = "".join(rand.pick(ONSETS[split]) + rand.pick(VOWELS)
                   + (rand.pick(CODAS[split]) if rand.chance(0.4) else "")
                   for _ in range(n_syll))
    if 3 <= len(name) <= 9 and name not in taken and name not in _vocab():
      taken.add(name)
      return name.capitalize()


# -------------------------------------------------------------------------------- entities


def _make_entities(rand: _Rand, split: str, n: int, first_id: int
                   ) -> tuple[list[_Ent], list[str], list[str]]:
  """One world's entities (ids from first_id), its region names and all its minted names."""
  taken: set[str] = set()
  # Fewer stems than entities, so first names, family names and place names collide.
  stems = [_mint(rand, split, taken) for _ in range(max(4, math.ceil(STEM_FRACTION * n)))]
  regions = [_mint(rand, split, taken) for _ in range(max(2, min(8, n // 25)))]
  kinds = [KIND_CYCLE[i % len(KIND_CYCLE)] for i in range(n)]
  kinds = rand.sample(kinds, n)
  ents: list[_Ent] = []
  extra: list[str] = []  # Names minted beyond the stem pool (tiny worlds only).
  used_names: set[str] = set()
  for i, kind in enumerate(kinds):
    role = rand.pick(list(ROLES[kind]))
    for _ in range(1000):
      if kind == "person":
        parts = tuple(rand.sample(stems, 2))
        key = " ".join(parts)
      else:
        parts = (rand.pick(stems),)
        key = f"{parts[0]}|{role}"
      if key not in used_names:
        break
    else:  # Tiny worlds only: the stem pool cannot name everyone distinctly.
      extra.append(_mint(rand, split, taken))
      parts = (parts[0], extra[-1]) if kind == "person" else (extra[-1],)
      key = " ".join(parts) if kind == "person" else f"{parts[0]}|{role}"
    used_names.add(key)
    pron = rand.pick(("he", "she")) if kind == "person" else "it"
    ents.append(_Ent(
        id=first_id + i, kind=kind, name=" ".join(parts), parts=parts, role=role,
        region=rand.pick(regions), trait=rand.pick(list(TRAITS)), colour=rand.pick(list(COLOURS)),
        emblem=rand.pick(list(EMBLEMS)), obj=rand.pick(list(OBJECTS)), pron=pron,
        epithet=rand.pick(EPITHETS) if kind == "person" and rand.chance(0.5) else None))
  by_kind: dict[str, list[_Ent]] = {k: [] for k in KIND_ATTRS}
  uses: dict[str, int] = {}
  for e in ents:
    by_kind[e.kind].append(e)
    for p in e.parts:
      uses[p] = uses.get(p, 0) + 1
  rival_pools = {kind: [o for k in rival_kinds for o in by_kind[k]]
                 for kind, rival_kinds in RIVAL_KINDS.items()}
  for e in ents:
    if "allegiance" in KIND_ATTRS[e.kind] and by_kind["guild"]:
      e.allegiance = rand.pick(by_kind["guild"])
    pool = rival_pools.get(e.kind, [])
    while len(pool) > 1 and (e.rival is None or e.rival is e):  # e itself is in its pool.
      e.rival = rand.pick(pool)
    # Like Zeshel's "Varn (river)": only a shared non-person name needs disambiguation.
    shared = e.kind != "person" and uses[e.parts[0]] > 1
    e.title = f"{e.name} ({e.role})" if shared else e.name
  return ents, regions, stems + regions + extra


def _attrs(e: _Ent) -> list[str]:
  return [a for a in KIND_ATTRS[e.kind]
          if not (a == "allegiance" and e.allegiance is None or a == "rival" and e.rival is None)]


def _description(rand: _Rand, e: _Ent, regions: list[str]) -> str:
  """Multi-sentence catalogue text: every attribute in its canonical words, plus one filler."""
  pron, poss = e.pron.capitalize(), _poss(e).capitalize()
  role = e.role if e.kind != "guild" else f"{e.role} of {rand.pick(('members', 'sworn fellows'))}"
  out = [f"{e.title} is {_a(role)} {WHERE[e.kind]} {e.region}."]
  if e.epithet:
    out.append(f"{pron} is also called {e.parts[0]} the {e.epithet}.")
  for attr in _attrs(e):
    if attr == "trait":
      out.append(f"{pron} is known to be {e.trait}.")
    elif attr == "allegiance":
      verb = {"person": "serves", "place": "is ruled by", "artifact": "belongs to"}[e.kind]
      out.append(f"{pron} {verb} {e.allegiance.title}.")
    elif attr == "emblem":
      out.append(f"{poss} emblem is {_a(e.colour)} {e.emblem}.")
    elif attr == "object":
      out.append(f"{pron} is never without {_a(e.obj)}.")
    elif attr == "rival":
      out.append(f"{poss} rival is {e.rival.title}.")
  obj = {"he": "him", "she": "her", "it": "it"}[e.pron]
  out.append(rand.pick(DESC_FILLERS).format(poss=_poss(e), obj=obj))
  return " ".join(out)


# -------------------------------------------------------------------------------- contexts


def _short(rand: _Rand, e: _Ent) -> str:
  """How a text refers to e in passing: often just a first name or the bare stem."""
  return e.parts[0] if e.kind != "person" or rand.chance(0.5) else e.name


def _surface(rand: _Rand, e: _Ent) -> str:
  """The mention string: full name, first name, family name or epithet form."""
  if e.kind != "person":
    return e.name
  u = rand.uniform()
  if u < 0.3:
    return e.name
  if u < 0.6 or (u >= 0.8 and not e.epithet):
    return e.parts[0]
  if u < 0.8:
    return e.parts[1]
  return f"{e.parts[0]} the {e.epithet}"


def _clue(rand: _Rand, e: _Ent, attr: str) -> str:
  """A subject-less past-tense clause stating one attribute, canonically or in paraphrase."""
  canon = rand.chance(P_CANONICAL)
  if attr == "role":
    if canon:
      return f"worked as {_a(e.role)}" if e.kind == "person" else f"was known as a {e.role}"
    return rand.pick(ROLES[e.kind][e.role])
  if attr == "region":
    return (f"came from {e.region}" if canon else
            rand.pick((f"was often seen near {e.region}", f"returned to the hills of {e.region}")))
  if attr == "trait":
    adj = e.trait if canon else rand.pick(TRAITS[e.trait])
    return rand.pick((f"was {adj} as ever", f"had always been {adj}", f"proved {adj} once more"))
  if attr == "allegiance":
    g = _short(rand, e.allegiance)
    if canon:
      verb = {"person": "served", "place": "was ruled by", "artifact": "belonged to"}[e.kind]
      return f"{verb} {g}"
    return rand.pick((f"owed fealty to {g}", f"was bound by oath to {g}"))
  if attr == "emblem":
    colour = e.colour if canon or rand.chance(0.3) else rand.pick(COLOURS[e.colour])
    emblem = e.emblem if canon else rand.pick(EMBLEMS[e.emblem])
    verb = "bore the emblem of" if canon else "flew a banner showing"
    return f"{verb} {_a(colour)} {emblem}"
  if attr == "object":
    return (f"had {_a(e.obj)} at hand" if canon else
            f"{rand.pick(('clutched', 'kept'))} {_a(rand.pick(OBJECTS[e.obj]))} close")
  if attr == "rival":
    r = _short(rand, e.rival)
    return (f"was the rival of {r}" if canon else
            rand.pick((f"feuded bitterly with {r}", f"swore vengeance on {r}",
                       f"clashed again with {r}")))
  raise ValueError(f"unknown attribute {attr!r}")


def _padding(rand: _Rand, ents: list[_Ent], regions: list[str], gold: _Ent) -> str:
  """A sentence not about the gold entity: filler, or a distractor about another entity."""
  if rand.chance(P_DISTRACTOR) and len(ents) > 1:
    other = rand.pick(ents)
    if other is not gold:
      return f"{_short(rand, other)} {_clue(rand, other, rand.pick(_attrs(other)))}."
  return rand.pick(FILLERS).format(region=rand.pick(regions))


def _mention_sentence(rand: _Rand, e: _Ent) -> tuple[str, str, str, list[str]]:
  """(lead, surface, rest-of-sentence, follow-up sentences) for one mention of e."""
  attrs = rand.sample(_attrs(e), rand.between(2, 3))
  lead, surface = rand.pick(LEADS), _surface(rand, e)
  rest = f" {_clue(rand, e, attrs[0])}."
  follow = [f"{e.pron.capitalize()} {_clue(rand, e, a)}." for a in attrs[1:]]
  return lead, surface, rest, follow


def _make_mention(rand: _Rand, e: _Ent, ents: list[_Ent], regions: list[str], world: str,
                  mention_id: str) -> Mention:
  """One mention of e with 20-60 words of context on each side."""
  lead, surface, rest, follow = _mention_sentence(rand, e)
  left = []
  if e.kind == "person" and surface != e.name and rand.chance(0.25):
    # An earlier full-name reference, as a real text would have before a short form.
    left.append(f"{e.name} {_clue(rand, e, 'region')}.")
  left = _pad(rand, left + [lead], ents, regions, e, at_end=False)
  right = _pad(rand, [rest] + follow, ents, regions, e, at_end=True)
  return Mention(context_left=" ".join(left), mention=surface, context_right=" ".join(right),
                 label_id=e.id, world=world, id=mention_id, label_title=e.title)


def _pad(rand: _Rand, pieces: list[str], ents: list[_Ent], regions: list[str], gold: _Ent,
         at_end: bool) -> list[str]:
  """Adds padding sentences (after `pieces`, or before them) up to 20-50 words, at most 60."""
  target = rand.between(MIN_CONTEXT_WORDS, 50)
  words = sum(len(p.split()) for p in pieces)
  while words < target:
    sentence = _padding(rand, ents, regions, gold)
    n = len(sentence.split())
    if words >= MIN_CONTEXT_WORDS and words + n > MAX_CONTEXT_WORDS:
      break
    if at_end:
      pieces.append(sentence)
    else:
      pieces.insert(rand.below(len(pieces)), sentence)  # Anywhere before the lead.
    words += n
  return pieces


def _make_document(rand: _Rand, ents: list[_Ent], regions: list[str], world: str,
                   doc_id: str) -> Document:
  """Several entities' mentions embedded in one text, with exact character spans."""
  text, spans = "", []

  def add(sentence: str) -> int:  # Appends a sentence; returns where it starts.
    nonlocal text
    text += " " if text else ""
    text += sentence
    return len(text) - len(sentence)

  for e in rand.sample(ents, rand.between(3, 6)):
    if rand.chance(0.5):
      add(rand.pick(FILLERS).format(region=rand.pick(regions)))
    lead, surface, rest, follow = _mention_sentence(rand, e)
    start = add(lead + surface + rest) + len(lead)
    spans.append(Span(start=start, end=start + len(surface), label_id=e.id,
                      label_title=e.title, mention=surface))
    for sentence in follow[:1]:
      add(sentence)
  return Document(id=doc_id, text=text, spans=tuple(spans), world=world)


# ------------------------------------------------------------------------------ generation


def generate(cfg: SyntheticConfig = SyntheticConfig()) -> SyntheticCorpus:
  """Builds the whole corpus in memory; deterministic in cfg, zero-shot checked."""
  if min(cfg.num_train_worlds, cfg.num_test_worlds, cfg.entities_per_world) < 1:
    raise ValueError(f"need at least one train world, test world and entity: {cfg}")
  entities: list[Entity] = []
  out: dict[str, Any] = {"train_mentions": [], "test_mentions": [], "train_documents": [],
                         "test_documents": [], "train_worlds": [], "test_worlds": []}
  name_parts: dict[str, list[str]] = {}
  for split_code, (split, n_worlds) in enumerate((("train", cfg.num_train_worlds),
                                                  ("test", cfg.num_test_worlds))):
    world_names: set[str] = set()
    for w in range(n_worlds):
      rand = _Rand(cfg.seed, split_code, w)
      world = _mint(rand, split, world_names).lower()
      ents, regions, names = _make_entities(rand, split, cfg.entities_per_world, len(entities))
      entities += [Entity(id=e.id, title=e.title, text=_description(rand, e, regions),
                          world=world) for e in ents]
      mentions = [_make_mention(rand, e, ents, regions, world, f"{world}-m{e.id}-{j}")
                  for e in ents for j in range(cfg.mentions_per_entity)]
      out[f"{split}_mentions"] += rand.sample(mentions, len(mentions))  # Not grouped by entity.
      out[f"{split}_documents"] += [_make_document(rand, ents, regions, world, f"{world}-d{j}")
                                    for j in range(cfg.docs_per_world)]
      out[f"{split}_worlds"].append(world)
      name_parts[world] = names
  corpus = SyntheticCorpus(config=cfg, entities=entities, name_parts=name_parts, **out)
  check_zero_shot(corpus)
  return corpus


def check_zero_shot(corpus: SyntheticCorpus) -> None:
  """Raises if any test-world name or title occurs in training text, or ids overlap."""
  train_worlds = set(corpus.train_worlds)
  train_texts = [f"{e.title} {e.text}" for e in corpus.entities if e.world in train_worlds]
  train_texts += [f"{m.context_left} {m.mention} {m.context_right}"
                  for m in corpus.train_mentions]
  train_texts += [d.text for d in corpus.train_documents]
  train_tokens = set(tokenize(" ".join(train_texts)))
  train_names = {n for w in corpus.train_worlds for n in corpus.name_parts[w]}
  for world in corpus.test_worlds:
    leaked = sorted(n for n in corpus.name_parts[world]
                    if n.lower() in train_tokens or n in train_names)
    if leaked:
      raise RuntimeError(f"test world {world} names occur in training worlds: {leaked[:5]}")
  train_titles = {e.title for e in corpus.entities if e.world in train_worlds}
  train_ids = {e.id for e in corpus.entities if e.world in train_worlds}
  for e in corpus.entities:
    if e.world not in train_worlds and (e.title in train_titles or e.id in train_ids):
      raise RuntimeError(f"test entity {e.id} {e.title!r} also exists in a training world")


def _manifest(cfg: SyntheticConfig) -> str:
  return json.dumps({"config": dataclasses.asdict(cfg),
                     "generator_version": GENERATOR_VERSION},
                    indent=2, sort_keys=True) + "\n"


def write(corpus: SyntheticCorpus, out_dir: str | Path) -> dict[str, Path]:
  """Writes the corpus as BLINK jsonl files (each atomically) and then the manifest.

  The manifest goes last, so an interrupted write is seen as absent by ensure_written.
  Returns {"entities": path, "train_mentions": path, ...}.
  """
  out_dir = storage.path_object(out_dir)
  paths = {key: out_dir / name for key, name in FILES.items()}
  for key, path in paths.items():
    write_jsonl(path, getattr(corpus, key))
  storage.atomic_write_text(out_dir / MANIFEST, _manifest(corpus.config))
  return paths


def ensure_written(cfg: SyntheticConfig, out_dir: str | Path) -> dict[str, Path]:
  """Generates and writes the corpus unless out_dir already holds this exact config's files."""
  out_dir = storage.path_object(out_dir)
  paths = {key: out_dir / name for key, name in FILES.items()}
  manifest = out_dir / MANIFEST
  fresh = (manifest.is_file() and manifest.read_text(encoding="utf-8") == _manifest(cfg)
           and all(p.is_file() for p in paths.values()))
  return paths if fresh else write(generate(cfg), out_dir)
