"""blink_jax as a spaCy pipeline component: `nlp.add_pipe("blink_jax_linker", config=...)`.

  import spacy
  nlp = spacy.blank("en")                     # or any pipeline
  nlp.add_pipe("blink_jax_linker", config={"workdir": "/tmp/blink_demo"})
  doc = nlp("Later that year, Gegwe was often seen near the river.")
  [(e.text, e.kb_id_, e._.blink_jax["score"]) for e in doc.ents]

The factory is registered when this module is imported, and through the
`spacy_factories` entry point of an installed blink_jax, so spaCy finds it with no
import at all. Config (all but `workdir` optional):

* workdir: a workdir with a trained linker (--config.mode=train_linker, or the demo).
* mode: "fast" (bi-encoder) or "full" (cross-encoder re-ranking), as `Linker.load`.
* entities: a catalogue jsonl to link against instead of the training one.
* use_ents: False: the linker finds the mentions itself and `doc.ents` becomes its spans,
  labelled `label`; any entities already there are replaced. True (bring your own NER):
  the spans already in `doc.ents` (from an earlier `ner` or `entity_ruler`) are linked, and
  keep their labels and boundaries.
* label: the label of the spans the linker finds ("ENTITY").
* mention_threshold, nil_threshold: override the calibrated thresholds (the CLI's flags).
* batch_size: texts per linker call in `nlp.pipe`.

What it sets:

* `span.kb_id_`: the entity's id as a string (spaCy stores strings: 42 becomes "42"), or
  "NIL" (spaCy's own EntityLinker's word) when the linker answers NIL.
* `span._.blink_jax`: the linker's result for the span, ids with their JSON types:
  {"start", "end", "mention", "entity_id", "title", ["url",] "score", "nil"}; for NIL
  spans entity_id and title are the best candidate's, for inspection.
* `doc._.blink_jax`: the list of those results for the whole doc, every span included.

Offsets: the linker works in characters over word pieces. Each span it finds becomes the
smallest run of spaCy tokens that covers it (`char_span(..., alignment_mode="expand")`):
"U" in the token "U.S." gives the span "U.S.", while `_.blink_jax` keeps the linker's own
offsets. A span that still overlaps one kept before it (two linker spans inside one spaCy
token) is left out of `doc.ents`; it stays in `doc._.blink_jax`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch

if TYPE_CHECKING:  # The linker (and JAX) load with the first component, not on import.
  from blink_jax.inference.linker import Linker

FACTORY = "blink_jax_linker"
EXTENSION = "blink_jax"
NIL_KB_ID = "NIL"  # As spaCy's EntityLinker marks an entity it could not link.

# set_extension raises if asked twice; a module reloaded (or imported under two names)
# must not fail.
for _cls in (Span, Doc):
  if not _cls.has_extension(EXTENSION):
    _cls.set_extension(EXTENSION, default=None)


class BlinkJaxLinker:
  """Links each doc's entity spans with a blink_jax `Linker` (see the module docstring)."""

  def __init__(self, linker: Linker, *, name: str = FACTORY, use_ents: bool = False,
               label: str = "ENTITY", batch_size: int = 32):
    self.linker, self.name = linker, name
    self.use_ents, self.label, self.batch_size = use_ents, label, batch_size

  def __call__(self, doc: Doc) -> Doc:
    self._link([doc])
    return doc

  def pipe(self, docs: Iterable[Doc], batch_size: Optional[int] = None) -> Iterator[Doc]:
    """Links docs a batch at a time: one linker call per batch of texts."""
    for batch in minibatch(docs, size=batch_size or self.batch_size):
      self._link(batch)
      yield from batch

  def _link(self, docs: list[Doc]) -> None:
    if self.use_ents:
      results = self._disambiguate(docs)
      for doc, found in zip(docs, results):
        doc.ents = [_span(doc, ent.start, ent.end, ent.label_, r, span_id=ent.id_)
                    for ent, r in zip(doc.ents, found)]
        doc._.set(EXTENSION, found)
      return
    for doc, found in zip(docs, self.linker.link([doc.text for doc in docs])):
      doc.ents = spans_for(doc, found, self.label)
      doc._.set(EXTENSION, found)

  def _disambiguate(self, docs: list[Doc]) -> list[list[dict]]:
    """The linker's result for each span of each doc's `doc.ents`, with its offsets."""
    # pylint: disable-next=g-import-not-at-top
    from blink_jax.inference.linker import mention_of
    max_len = self.linker.config.data.max_context_len
    where = [(i, e.start_char, e.end_char) for i, doc in enumerate(docs) for e in doc.ents]
    # The same BLINK mention (context trimmed alike) as `Linker.link` makes of its spans.
    found = self.linker.disambiguate([mention_of(docs[i].text, s, e, max_len)
                                      for i, s, e in where])
    out: list[list[dict]] = [[] for _ in docs]
    for (i, s, e), r in zip(where, found):
      out[i].append({"start": s, "end": e, **r})
    return out


def kb_id(result: dict) -> str:
  """spaCy's kb_id of a linker result: the entity id as a string, or NIL_KB_ID."""
  return NIL_KB_ID if result["nil"] else str(result["entity_id"])


def _span(doc: Doc, start: int, end: int, label: str, result: dict, span_id: str = ""
          ) -> Span:
  span = Span(doc, start, end, label=label, kb_id=kb_id(result), span_id=span_id)
  # The value is stored on the doc under the span's offsets, label and kb_id, so the spans
  # `doc.ents` gives back later carry it too.
  span._.set(EXTENSION, result)
  return span


def spans_for(doc: Doc, results: list[dict], label: str) -> list[Span]:
  """`doc.ents` for the linker's spans of `doc.text`: each expanded to whole tokens; one
  that overlaps a span kept before it (or covers no token) is left out."""
  spans: list[Span] = []
  for r in sorted(results, key=lambda r: (r["start"], r["end"])):
    aligned = doc.char_span(r["start"], r["end"], alignment_mode="expand")
    if aligned is None or (spans and aligned.start < spans[-1].end):
      continue
    spans.append(_span(doc, aligned.start, aligned.end, label, r))
  return spans


@Language.factory(
    FACTORY,
    default_config={"mode": "fast", "entities": None, "use_ents": False, "label": "ENTITY",
                    "mention_threshold": None, "nil_threshold": None, "batch_size": 32},
    assigns=["doc.ents", "token.ent_kb_id", f"span._.{EXTENSION}", f"doc._.{EXTENSION}"],
)
def make_linker(nlp: Language, name: str, workdir: str, mode: str, entities: Optional[str],
                use_ents: bool, label: str, mention_threshold: Optional[float],
                nil_threshold: Optional[float], batch_size: int) -> BlinkJaxLinker:
  """The component: loads the linker trained in `workdir` (see the module docstring)."""
  del nlp  # The linker brings its own tokenizer; spaCy's tokens only bound the spans.
  # pylint: disable-next=g-import-not-at-top
  from blink_jax.inference.linker import Linker
  overrides: dict[str, Any] = {}
  if mention_threshold is not None:
    overrides["linker.mention_threshold"] = mention_threshold
  if nil_threshold is not None:
    overrides[f"linker.nil_threshold.{mode}"] = nil_threshold
  linker = Linker.load(workdir, mode=mode, entities=entities, overrides=overrides)
  return BlinkJaxLinker(linker, name=name, use_ents=use_ents, label=label,
                        batch_size=batch_size)
