"""Why one wikiel dev set is harder than another: the shape of its documents and mentions.

No model involved; reads the wikiel dev data only. Per set: documents, words per
document, in-catalogue mentions, the share that are one word, the share whose
mention is the gold title exactly (case-insensitive), and the median number of
catalogue titles that contain every word of the mention (how many entities a
name alone leaves open). Prints one JSON line.

  python bench/wikiel_difficulty.py [--wikiel_dir=../shared/data/wikiel]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics

SETS = ("KORE50", "oke_2015", "oke_2016")
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def _read(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def set_report(docs: list[dict], mentions: list[dict], titles_by_word: dict[str, set[int]],
               titles: dict[int, str]) -> dict:
  gold = [m for m in mentions if m["label_id"] >= 0]
  open_titles = []
  for m in gold:
    words = set(_words(m["mention"]))
    sets = [titles_by_word.get(w, set()) for w in words]
    open_titles.append(len(set.intersection(*sets)) if sets else 0)
  return {
      "documents": len(docs),
      "words_per_document": round(statistics.mean(len(_words(d["text"])) for d in docs), 1),
      "in_catalogue_mentions": len(gold),
      "one_word": round(sum(len(_words(m["mention"])) == 1 for m in gold) / len(gold), 3),
      "mention_is_title": round(sum(m["mention"].lower() == titles[m["label_id"]].lower()
                                    for m in gold) / len(gold), 3),
      "median_titles_with_the_mentions_words": statistics.median(open_titles),
  }


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--wikiel_dir", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
      "wikiel"))
  args = parser.parse_args()
  entities = _read(os.path.join(args.wikiel_dir, "entities.jsonl"))
  titles = {e["id"]: e["title"] for e in entities}
  titles_by_word = collections.defaultdict(set)
  for i, title in titles.items():
    for w in _words(title):
      titles_by_word[w].add(i)
  out = {}
  for name in SETS:
    out[name] = set_report(_read(os.path.join(args.wikiel_dir, f"{name}.docs.jsonl")),
                           _read(os.path.join(args.wikiel_dir, f"{name}.mentions.jsonl")),
                           titles_by_word, titles)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
