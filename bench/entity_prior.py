"""Would a popularity prior fix the disambiguation a fold's held-out set gets wrong?

Each candidate's score (the linker's ranking score, a log-probability in full
mode) gets `w * log(1 + in-links)`, where an entity's in-links are how often
the weakly annotated Wikipedia summaries name it outside its own article (the
annotation the recipe trains on; a stand-in for Wikipedia's link counts, as
popularity priors use). The weight is chosen as a calibration rule would: the
best R@1 of the gold mentions in the calibration documents (out of every
stage's training), ties to the smaller weight. Reported per mode: R@1 at each
weight on the calibration mentions (also per training set) and on the
held-out set's in-catalogue mentions, the chosen weight, and its held-out R@1
beside the weight-0 one and the held-out set's own best (an oracle, never a
result). No retraining; nothing in WORKDIR is written. Prints one JSON line.

  python bench/entity_prior.py --workdir=/tmp/runs/kore50 --held_out=KORE50
"""
import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax.data import sources, wikipedia  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference.linker import Linker  # pylint: disable=g-import-not-at-top


def in_links(config, entities) -> collections.Counter:
  """How often the weak annotation of the summaries names each catalogue entity
  outside its own article."""
  summaries = wikipedia.read_summaries(wikipedia.summaries_path(config.data.get("summaries")))
  names = wikipedia.annotator(list(entities), summaries)
  return collections.Counter(m.label_id for s, ms in wikipedia.annotate(summaries, names)
                             for m in ms if m.label_id >= 0 and m.title != s.title)


def first_is_gold(ranked, labels: np.ndarray, prior: np.ndarray, w: float) -> np.ndarray:
  """Per mention, whether the gold comes first after adding w * prior[id] to each
  candidate's score (padding stays -inf)."""
  bonus = np.where(ranked.ids >= 0, prior[np.maximum(ranked.ids, 0)], 0.0)
  top = np.take_along_axis(ranked.ids, np.argmax(ranked.scores + w * bonus, 1)[:, None], 1)
  return top[:, 0] == labels


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--held_out", required=True)
  parser.add_argument("--modes", default="fast,full")
  parser.add_argument("--weights", default="0,0.1,0.2,0.3,0.5,0.75,1,1.5,2")
  args = parser.parse_args()
  t0 = time.time()
  modes = tuple(args.modes.split(","))
  weights = sorted(float(w) for w in args.weights.split(","))
  lk = Linker.load(args.workdir, mode=modes[0])
  if "full" in modes:
    lk.load_full_mode()
  data = sources.load(lk.config, args.workdir, documents=True)  # The linker's stored config.
  counts = in_links(lk.config, data.entities)
  prior = np.zeros(int(data.entities.labels.max()) + 1)
  for label, n in counts.items():
    prior[label] = np.log1p(n)
  max_len = lk.config.data.max_context_len
  cal_mentions, cal_sets = [], []
  for d in data.calibration_documents:
    ms = cal.gold_mentions([d], max_len)[0]
    cal_mentions += ms
    cal_sets += [str(d.id).split("-")[0]] * len(ms)
  cal_sets = np.array(cal_sets)
  # Each set of mentions is ranked once per mode; the calibration's per-set rows are slices.
  groups = {"calibration": (cal_mentions, {"calibration": slice(None)}
                            | {f"calibration:{s}": cal_sets == s for s in sorted(set(cal_sets))}),
            args.held_out: ([m for m in data.evals[args.held_out] if m.label_id >= 0],
                            {args.held_out: slice(None)})}
  gold = [int(m.label_id) for m in groups[args.held_out][0]]
  out = {"bench": "entity_prior", "workdir": args.workdir, "held_out": args.held_out,
         "entities_with_in_links": int((prior > 0).sum()),
         "catalogue": len(data.entities),
         "held_out_gold_with_in_links": round(float(np.mean(prior[gold] > 0)), 4),
         "mentions": {name: len(ms) if isinstance(rows, slice) else int(rows.sum())
                      for ms, parts in groups.values() for name, rows in parts.items()},
         "weights": weights, "modes": {}}
  for mode in modes:
    r1 = {}
    for ms, parts in groups.values():
      ranked = lk.ranked(ms, None, mode)
      labels = np.array([m.label_id for m in ms])
      hits = [first_is_gold(ranked, labels, prior, w) for w in weights]
      for name, rows in parts.items():
        r1[name] = [round(float(h[rows].mean()), 4) for h in hits]
    chosen = int(np.argmax(r1["calibration"]))  # The first best: the smallest weight.
    held = r1[args.held_out]
    out["modes"][mode] = {"r_at_1": r1, "chosen_weight": weights[chosen],
                          "held_out_r_at_1": {"weight_0": held[weights.index(0.0)]
                                              if 0.0 in weights else None,
                                              "chosen": held[chosen],
                                              "oracle": max(held),
                                              "oracle_weight": weights[int(np.argmax(held))]}}
    print(f"{mode}: calibration picks {weights[chosen]}; held-out R@1 "
          f"{out['modes'][mode]['held_out_r_at_1']}", file=sys.stderr)
  out["seconds"] = round(time.time() - t0)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
