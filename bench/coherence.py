"""Does document coherence help disambiguation? Measured on a trained fold's linker.

Each gold span of a document is linked (fast and full mode), then each
candidate's score gains lambda x coherence: the mean, over the document's
other spans, of the probability-weighted cosine between the candidate's entity
vector and that span's candidates (the linker index's vectors). lambda is
chosen on the fold's calibration documents (never trained on) and the
held-out set is reported at that lambda (and at every lambda, for the record).
R@1 over in-catalogue gold spans. No retraining; nothing is written.

  python bench/coherence.py --workdir=/tmp/runs/O16 --held_out=oke_2016
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from blink_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
from blink_jax.inference import calibration as cal  # pylint: disable=g-import-not-at-top
from blink_jax.inference import linker as linker_lib  # pylint: disable=g-import-not-at-top

LAMBDAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def vectors(workdir):
  d = workdir_lib.linker_index_dir(workdir)
  v = np.load(os.path.join(d, "vectors.npy")).astype(np.float32)
  v = v * np.load(os.path.join(d, "scales.npy"))[:, None]
  ids = [json.loads(line)["id"] for line in open(os.path.join(d, "entities.jsonl"))]
  row = {i: r for r, i in enumerate(ids)}
  v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
  return v, row


def link_docs(lk, docs, mode):
  max_len = lk.config.data.max_context_len
  ms, doc_of, gold = [], [], []
  for di, d in enumerate(docs):
    for s in d.spans:
      ms.append(linker_lib.mention_of(d.text, s.start, s.end, max_len))
      doc_of.append(di)
      gold.append(-1 if s.label_id is None else s.label_id)
  r = lk.ranked(ms, None, mode)
  return r.ids, r.scores, np.array(doc_of), np.array(gold)


def coherence(ids, scores, doc_of, vec, row, variant):
  probs = linker_lib.probabilities(scores)
  n, k = ids.shape
  rows = np.vectorize(lambda i: row.get(int(i), -1))(ids)
  e = np.where((rows >= 0)[..., None], vec[np.maximum(rows, 0)], 0.0)  # [N, K, d]
  if variant == "top1":
    probs = np.zeros_like(probs)
    probs[:, 0] = 1.0
  ctx = (probs[..., None] * e).sum(1)  # [N, d] each span's expected entity vector.
  coh = np.zeros((n, k), np.float32)
  for d in np.unique(doc_of):
    m = np.flatnonzero(doc_of == d)
    if len(m) < 2:
      continue
    total = ctx[m].sum(0)
    for i in m:
      others = (total - ctx[i]) / (len(m) - 1)
      coh[i] = e[i] @ others
  return coh


def accuracy(ids, scores, coh, gold, lam):
  s = np.where(np.isfinite(scores), scores + lam * coh, -np.inf)
  top = ids[np.arange(len(ids)), np.argmax(s, 1)]
  inc = gold >= 0
  return float((top[inc] == gold[inc]).mean())


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--held_out", required=True)
  p.add_argument("--modes", default="fast,full")
  args = p.parse_args()
  modes = args.modes.split(",")
  lk = linker_lib.Linker.load(args.workdir, mode=modes[0])
  if "full" in modes:
    lk.load_full_mode()
  config = workdir_lib.load_config(args.workdir, "linker")
  data = sources.load(config, args.workdir, documents=True)
  sets = {"calibration": data.calibration_documents,
          args.held_out: data.eval_documents[args.held_out]}
  vec, row = vectors(args.workdir)
  out = []
  for mode in modes:
    linked = {name: link_docs(lk, docs, mode) for name, docs in sets.items()}
    for variant in ("soft", "top1"):
      res = {}
      for name, (ids, scores, doc_of, gold) in linked.items():
        coh = coherence(ids, scores, doc_of, vec, row, variant)
        res[name] = {lam: round(accuracy(ids, scores, coh, gold, lam), 4) for lam in LAMBDAS}
      cal_acc = res["calibration"]
      best = max(LAMBDAS, key=lambda l: (cal_acc[l], -l))
      line = {"mode": mode, "variant": variant, "chosen_lambda": best,
              "held_out_at_0": res[args.held_out][0.0],
              "held_out_at_chosen": res[args.held_out][best], "per_lambda": res}
      print(json.dumps(line), file=sys.stderr)
      out.append(line)
  print(json.dumps({"bench": "coherence", "workdir": args.workdir, "held_out": args.held_out,
                    "rows": out}))


if __name__ == "__main__":
  main()
