"""Where end-to-end linking loses, on a trained fold's held-out documents.

Links the held-out set's documents with WORKDIR's calibrated linker (as
`evaluate.documents_report` does) and sorts every span, so that a weak linking
F1 can be read as its parts:

  linked spans     exact / overlapping a gold span, right / wrong entity, or
                   overlapping none ("spurious"); a spurious span whose text is
                   its entity's title (case aside) is most likely a real
                   mention the annotators left out ("Switzerland" -> Switzerland);
  NIL spans        detected, then not linked, split as above;
  gold spans       of catalogue entities: found (weakly) with the right
                   entity, covered by a span linked to another gold span's
                   entity ("merged": a boundary error), linked to a wrong
                   entity, detected but NIL, or not detected at all; gold
                   spans outside the catalogue (NIL gold) are counted apart,
                   as left NIL, linked, or not detected;
  by form          the same for spans that start in lower case (common nouns,
                   "the university"), for he/she pronouns ("he", "her"), which
                   some sets annotate and others never do, and for the rest
                   ("capitalised", or "other" when not starting with a letter).

No retraining; nothing in WORKDIR is written. Prints one JSON line.

  python bench/linking_errors.py --workdir=/tmp/runs/oke_2015 --held_out=oke_2015 --mode=full
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import evaluate, span_metrics, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker  # pylint: disable=g-import-not-at-top

PRONOUNS = frozenset("he him his himself she her hers herself".split())


def form(text: str) -> str:
  if text.lower() in PRONOUNS:
    return "pronoun"
  if not text[:1].isalpha():
    return "other"
  return "lower_case" if text[:1].islower() else "capitalised"


def sort_spans(text: str, gold: list[tuple], pred: list[dict], counts: collections.Counter
               ) -> None:
  """Adds one document's spans to `counts`; `gold` holds (start, end, entity id),
  NIL gold as span_metrics.NIL_ID."""
  hit = collections.defaultdict(set)  # Gold row -> what touched it.
  for p in pred:
    over = [i for i, (s, e, _) in enumerate(gold) if s < p["end"] and p["start"] < e]
    exact = any(gold[i][:2] == (p["start"], p["end"]) for i in over)
    right = any(gold[i][2] == p["entity_id"] for i in over)
    kind = "nil" if p["nil"] else "linked"
    if not over:
      verdict = "spurious"
      if (p["title"] or "").lower() == text[p["start"]:p["end"]].lower():
        counts[f"{kind}/spurious_title_match"] += 1
    else:
      verdict = ("exact" if exact else "overlap") + ("_right" if right else "_wrong")
    counts[f"{kind}/{verdict}"] += 1
    counts[f"{kind}/{form(text[p['start']:p['end']])}/{verdict}"] += 1
    for i in over:
      if p["nil"]:
        hit[i].add("nil")
      elif p["entity_id"] == gold[i][2]:
        hit[i].add("right")
      else:
        # Right for another gold span it covers: the boundary is the error.
        hit[i].add("merged" if right else "wrong")
  for i, (s, e, label) in enumerate(gold):
    what = hit.get(i, set())
    if label == span_metrics.NIL_ID:
      verdict = ("linked" if what & {"right", "merged", "wrong"} else
                 "nil" if what else "undetected")
      counts[f"nil_gold/{verdict}"] += 1
      continue
    verdict = next((v for v in ("right", "merged", "wrong", "nil") if v in what), "undetected")
    counts[f"gold/{verdict}"] += 1
    counts[f"gold/{form(text[s:e])}/{verdict}"] += 1


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  parser.add_argument("--mode", default="full")
  args = parser.parse_args()
  linker = Linker.load(args.workdir, mode="fast")
  if args.mode == "full":
    linker.load_full_mode()
  config = workdir_lib.load_config(args.workdir, "linker")
  docs = sources.load(config, args.workdir, documents=True).eval_documents[args.held_out]
  pred = linker.link([d.text for d in docs], mode=args.mode)
  golds = [evaluate._gold_ids(linker, cal.gold_spans(d)) for d in docs]  # pylint: disable=protected-access
  counts = collections.Counter()
  for d, g, p in zip(docs, golds, pred):
    sort_spans(d.text, g, p, counts)
  report = span_metrics.report(span_metrics.score_documents(
      (g, [(r["start"], r["end"], r["entity_id"], r["nil"]) for r in p])
      for g, p in zip(golds, pred)))
  print(json.dumps({"bench": "linking_errors", "workdir": args.workdir,
                    "held_out": args.held_out, "mode": args.mode, "documents": len(docs),
                    "calibration_objective": linker.config.linker.get("calibration_objective"),
                    **{k: round(report[k], 3) for k in (
                        "linking/weak/precision", "linking/weak/recall", "linking/weak/f1",
                        "linking/strong/f1", "mention_detection/weak/f1")},
                    "counts": dict(sorted(counts.items()))}))


if __name__ == "__main__":
  main()
