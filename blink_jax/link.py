"""Link a jsonl of texts with a trained linker: python -m blink_jax.link.

  python -m blink_jax.link --workdir=/tmp/demo --input=docs.jsonl --output=linked.jsonl
  python -m blink_jax.link --workdir=/tmp/demo --input=docs.jsonl --output=linked.jsonl \\
      --mode=full --entities=my_kb.jsonl --evaluate

Each input line is a JSON object with a "text" (other keys are kept); each
output line is that object plus "entities": [{start, end, mention, entity_id,
title, score, nil}], character offsets into the text. The input is streamed
in batches in constant memory; bad lines are reported with their line number
and skipped; the output appears only when complete, and a killed run resumes
where it stopped (`link_io`). With --evaluate, input lines that carry gold
"mentions" ([{start, end, label_id}], the BLINK document format) are scored:
ELQ-style mention and linking P/R/F1, printed and written to
WORKDIR/metrics.json under "<input name>/linker <mode>".
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging

from blink_jax import link_io
from blink_jax.inference import linker as linker_lib
from blink_jax import metric_writer
from blink_jax import span_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir with a trained linker "
                    "(--config.mode=train_linker, or the demo).")
flags.DEFINE_string("input", None, "jsonl with one {\"text\": ...} object per line.")
flags.DEFINE_string("output", None, "Where the linked jsonl goes.")
flags.DEFINE_enum("mode", "fast", linker_lib.MODES,
                  "fast: bi-encoder only; full: cross-encoder re-ranking.")
flags.DEFINE_string("entities", None, "A catalogue jsonl to link against instead of "
                    "the training one (encoded once, cached in the workdir).")
flags.DEFINE_integer("batch_size", 32, "Texts per batch.")
flags.DEFINE_string("text_field", "text", "The input field holding the text.")
flags.DEFINE_bool("use_worlds", False, "Restrict each text's candidates to the "
                  "catalogue entities of its \"world\" field (Zeshel-style data).")
flags.DEFINE_bool("evaluate", False, "Score the output against the input's gold "
                  "\"mentions\" and write the report to WORKDIR/metrics.json.")
flags.DEFINE_float("nil_threshold", None, "Override the calibrated NIL threshold.")
flags.DEFINE_float("mention_threshold", None, "Override the calibrated mention threshold.")
flags.mark_flags_as_required(["workdir", "input", "output"])


def link_records(linker: linker_lib.Linker, records: list[dict], *, text_field: str,
                 use_worlds: bool) -> list[list[dict]]:
  texts = [r[text_field] for r in records]
  worlds = [r.get("world") for r in records] if use_worlds else None
  return linker.link(texts, worlds=worlds)


def evaluate_output(path: str) -> dict:
  """P/R/F1 of a linked jsonl whose lines carry gold "mentions" (lines without are skipped)."""
  totals, n = {}, 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      if "mentions" not in doc:
        continue
      gold = [(m["start"], m["end"], m.get("label_id", -1)) for m in doc["mentions"]]
      totals = span_metrics.merge(totals, span_metrics.score_document(gold, doc["entities"]))
      n += 1
  return {**span_metrics.report(totals), "documents": n}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  overrides = {}
  if FLAGS.nil_threshold is not None:
    overrides["linker.nil_threshold." + FLAGS.mode] = FLAGS.nil_threshold
  if FLAGS.mention_threshold is not None:
    overrides["linker.mention_threshold"] = FLAGS.mention_threshold
  linker = linker_lib.Linker.load(FLAGS.workdir, mode=FLAGS.mode, entities=FLAGS.entities,
                                  overrides=overrides)
  logging.info("Linker (%s mode): mention threshold %.3f, NIL below %.3f.", FLAGS.mode,
               linker.mention_threshold, linker.nil_threshold[FLAGS.mode])
  stats = link_io.stream(
      FLAGS.input, FLAGS.output,
      lambda records: link_records(linker, records, text_field=FLAGS.text_field,
                                   use_worlds=FLAGS.use_worlds),
      batch_size=FLAGS.batch_size, text_field=FLAGS.text_field,
      settings={"workdir": os.path.abspath(FLAGS.workdir), "mode": FLAGS.mode,
                "entities": FLAGS.entities, "use_worlds": FLAGS.use_worlds,
                "overrides": overrides})
  print(f"Linked {stats.linked} text{'' if stats.linked == 1 else 's'} into {FLAGS.output}"
        + (f"; skipped {stats.skipped} bad lines ({dict(stats.reasons)})"
           if stats.skipped else "")
        + (f"; resumed at input line {stats.resumed_from_line}"
           if stats.resumed_from_line else "") + ".")
  if FLAGS.evaluate:
    report = evaluate_output(FLAGS.output)
    name = os.path.basename(FLAGS.input).split(".")[0]
    writer = metric_writer.MetricWriter(FLAGS.workdir)
    # The CLI's own section: it never overwrites a stage's report on a set of
    # the same name (the demo's "test/linker fast").
    writer.results(f"link/{name}/{FLAGS.mode}", report)
    writer.close()
    print(f"{name} ({report['documents']} documents, {FLAGS.mode} mode): "
          f"mention F1 {report['mention_detection/strong/f1']:.3f} "
          f"(weak {report['mention_detection/weak/f1']:.3f}), linking P/R/F1 "
          f"{report['linking/strong/precision']:.3f}/{report['linking/strong/recall']:.3f}/"
          f"{report['linking/strong/f1']:.3f} (weak F1 {report['linking/weak/f1']:.3f}).")


if __name__ == "__main__":
  app.run(main)
