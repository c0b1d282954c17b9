"""Link texts with a trained linker: python -m blink_jax.link, or blink-jax-link.

  echo "Later that year, Gegwe was seen near the river." | python -m blink_jax.link --workdir=W
  python -m blink_jax.link --workdir=W --input=texts.txt --output=linked.jsonl
  python -m blink_jax.link --workdir=W --input=docs.jsonl --output=linked.jsonl \\
      --mode=full --entities=my_kb.jsonl --evaluate

Input, one text per line: plain text from stdin (no --input, or --input=-) or from a .txt
file, whose records are {"line": n, "text": the line}; or jsonl (any other file), one
{"text": ...} object per line whose other keys are kept. --input_format overrides the
choice. Output: one jsonl line per good input line, the record plus "entities": [{start,
end, mention, entity_id, title, [url,] score, nil}], character offsets into the text,
entity_id the catalogue's id as given (42 or "Q42"); to stdout without --output. From a
file to a file the input is streamed in batches in constant memory with a progress bar,
the output appears only when complete, and a killed run started again resumes where it
stopped (`link_io`); from or to a pipe each batch is written as soon as it is linked. Bad
lines are reported with file:line and skipped; so are a catalogue's with --skip_bad. With
--evaluate, input lines that carry gold "mentions" ([{start, end, label_id}], the BLINK
document format, label_id the catalogue's id) are scored: ELQ-style mention and linking
P/R/F1, printed and written to WORKDIR/metrics.json under "link/<input name>/<mode>".

Arguments, input and output paths are checked before the model loads; a mistake in them,
or a bad catalogue line, ends the run with one line (see `cli`; --debug for a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from absl import app
from absl import flags
from absl import logging

from blink_jax import cli
from blink_jax import link_io
from blink_jax import storage

if TYPE_CHECKING:  # Imported when used: see MODES.
  from blink_jax.inference.linker import Linker

STDIN = "-"
# The Linker's MODES, spelled out: importing the linker (and JAX) takes longer than a
# wrong argument should wait.
MODES = ("fast", "full")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir with a trained linker "
                    "(--config.mode=train_linker, or the demo).")
flags.DEFINE_string("input", None, "Texts to link: a .txt file (one text per line), a jsonl "
                    "file (one {\"text\": ...} object per line), or - for stdin (default).")
flags.DEFINE_string("output", None, "Where the linked jsonl goes (resumable when the input "
                    "is a file); stdout when absent.")
flags.DEFINE_enum("input_format", "auto", ["auto", *link_io.FORMATS],
                  "auto: text for stdin and .txt files, jsonl for other files.")
flags.DEFINE_enum("mode", "fast", MODES,
                  "fast: bi-encoder only; full: cross-encoder re-ranking.")
flags.DEFINE_string("entities", None, "A catalogue jsonl to link against instead of "
                    "the training one (encoded once, cached in the workdir).")
flags.DEFINE_bool("skip_bad", False, "Skip the catalogue's bad lines (each reported with "
                  "file:line) instead of stopping at the first.")
flags.DEFINE_integer("batch_size", 32, "Texts per batch (1 when typing into a terminal).",
                     lower_bound=1)
flags.DEFINE_string("text_field", "text", "The field holding the text (jsonl input), or "
                    "the key the text gets (plain-text input).")
flags.DEFINE_bool("use_worlds", False, "Restrict each text's candidates to the "
                  "catalogue entities of its \"world\" field (Zeshel-style jsonl).")
flags.DEFINE_bool("evaluate", False, "Score the output against the input's gold "
                  "\"mentions\" and write the report to WORKDIR/metrics.json.")
flags.DEFINE_float("nil_threshold", None, "Override the calibrated NIL threshold.")
flags.DEFINE_float("mention_threshold", None, "Override the calibrated mention threshold.")
flags.mark_flags_as_required(["workdir"])


# ------------------------------------------------------------------------------ checks
def input_format(path: str | None, choice: str = "auto") -> str:
  """The format of the input at `path` (None or "-": stdin) under --input_format=`choice`."""
  if choice != "auto":
    return choice
  return "text" if path in (None, STDIN) or path.endswith(".txt") else "jsonl"


def check_input(path: str | None) -> None:
  """A file input must exist and be readable (stdin needs nothing)."""
  if path in (None, STDIN):
    return
  storage.check_reachable(path, what="--input")
  if not storage.exists(path):
    raise cli.UserError(f"--input={path}: no such file")
  if not storage.isfile(path):
    raise cli.UserError(f"--input={path}: not a file")
  if not storage.is_remote(path) and not os.access(path, os.R_OK):
    raise cli.UserError(f"--input={path}: not readable")


def check_output(path: str | None, input_path: str | None) -> None:
  """An output file must not be the input (it would be overwritten), nor a directory, and
  its directory must be writable (or creatable)."""
  if path is None:
    return
  if path == STDIN:
    raise cli.UserError("--output=-: leave --output out to write to stdout")
  storage.check_reachable(path, what="--output", write=True)
  if storage.isdir(path):
    raise cli.UserError(f"--output={path}: is a directory")
  if input_path not in (None, STDIN) and _same_file(path, input_path):
    raise cli.UserError(f"--output={path} is the input file: linking would overwrite it")
  if storage.is_remote(path):
    return
  parent = _existing_parent(os.path.dirname(os.path.abspath(path)))
  if not os.access(parent, os.W_OK):
    raise cli.UserError(f"--output={path}: cannot write in {parent}")


def check_options(*, workdir: str, entities: str | None, fmt: str, output: str | None,
                  evaluate: bool, use_worlds: bool) -> None:
  """The options that need no model: a workdir, a catalogue, and what needs jsonl or a file."""
  storage.check_reachable(workdir, what="--workdir")
  if not storage.isdir(workdir):
    raise cli.UserError(f"--workdir={workdir}: no such directory")
  if entities:
    storage.check_reachable(entities, what="--entities")
  if entities and not storage.isfile(entities):
    raise cli.UserError(f"--entities={entities}: no such file")
  if evaluate and (output is None or fmt != "jsonl"):
    raise cli.UserError("--evaluate needs jsonl input with gold \"mentions\" and an --output "
                        "file to score")
  if use_worlds and fmt != "jsonl":
    raise cli.UserError("--use_worlds needs jsonl input whose lines carry a \"world\"")


def _same_file(a: str, b: str) -> bool:
  if storage.is_remote(a) or storage.is_remote(b):
    return a == b
  if os.path.exists(a) and os.path.exists(b):
    return os.path.samefile(a, b)  # Also through links.
  return os.path.realpath(a) == os.path.realpath(b)


def _existing_parent(directory: str) -> str:
  while not os.path.exists(directory):
    directory = os.path.dirname(directory)
  return directory


# ----------------------------------------------------------------------------- linking
def load_linker(workdir: str, *, mode: str, entities: str | None, skip_bad: bool,
                overrides: dict[str, Any]) -> Linker:
  """The trained linker of `workdir`; a bad catalogue line says how to skip such lines."""
  # pylint: disable=g-import-not-at-top
  from blink_jax.data import jsonl
  from blink_jax.inference import linker as linker_lib
  if skip_bad:
    overrides = {**overrides, "data.skip_bad": True}
  try:
    return linker_lib.Linker.load(workdir, mode=mode, entities=entities, overrides=overrides)
  except jsonl.DataError as e:
    if skip_bad:
      raise
    raise cli.UserError(f"{e} (--skip_bad skips the catalogue's bad lines)") from e


def link_records(linker: Linker, records: list[dict], *, text_field: str,
                 use_worlds: bool) -> list[list[dict]]:
  """The linker's spans of each record's text (candidates from its world if asked)."""
  texts = [r[text_field] for r in records]
  worlds = [r.get("world") for r in records] if use_worlds else None
  return linker.link(texts, worlds=worlds)


def evaluate_output(path: str) -> dict:
  """P/R/F1 of a linked jsonl whose lines carry gold "mentions" (lines without are skipped)."""
  from blink_jax import span_metrics  # pylint: disable=g-import-not-at-top
  totals, n = {}, 0
  with storage.open(path, encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      if "mentions" not in doc:
        continue
      gold = [(m["start"], m["end"], m.get("label_id", -1)) for m in doc["mentions"]]
      totals = span_metrics.merge(totals, span_metrics.score_document(gold, doc["entities"]))
      n += 1
  return {**span_metrics.report(totals), "documents": n}


def run_stream(link_batch: link_io.LinkBatch, *, input_path: str | None, output: str | None,
               fmt: str, batch_size: int, text_field: str,
               settings: dict[str, Any]) -> link_io.StreamStats:
  """Links the input into the output: resumable from a file to a file, else as a pipe."""
  kwargs = dict(batch_size=batch_size, text_field=text_field, input_format=fmt)
  if input_path not in (None, STDIN) and output is not None:
    return link_io.stream(input_path, output, link_batch, settings=settings, **kwargs)
  if input_path in (None, STDIN):
    source, name = sys.stdin.buffer, "<stdin>"
  else:
    source, name = storage.open(input_path, "rb"), input_path  # pylint: disable=consider-using-with
  with source:
    if output is None:
      return link_io.stream_pipe(source, sys.stdout.buffer, link_batch, name=name, **kwargs)
    with link_io.replaced_when_done(output) as sink:
      return link_io.stream_pipe(source, sink, link_batch, name=name, **kwargs)


def summary(stats: link_io.StreamStats, output: str | None) -> str:
  """One line for the user: how much was linked, skipped and resumed."""
  return (f"Linked {stats.linked} text{'' if stats.linked == 1 else 's'}"
          + (f" into {output}" if output else "")
          + (f"; skipped {stats.skipped} bad lines ({dict(stats.reasons)})"
             if stats.skipped else "")
          + (f"; resumed at input line {stats.resumed_from_line}"
             if stats.resumed_from_line else "") + ".")


def write_report(workdir: str, input_path: str, output: str, mode: str) -> str:
  """Scores the output, stores the report in WORKDIR/metrics.json; returns its summary."""
  from blink_jax import metric_writer  # pylint: disable=g-import-not-at-top
  report = evaluate_output(output)
  name = os.path.basename(input_path).split(".")[0]
  writer = metric_writer.MetricWriter(workdir)
  # The CLI's own section: it never overwrites a stage's report on a set of the same name
  # (the demo's "test/linker fast").
  writer.results(f"link/{name}/{mode}", report)
  writer.close()
  return (f"{name} ({report['documents']} documents, {mode} mode): "
          f"mention F1 {report['mention_detection/strong/f1']:.3f} "
          f"(weak {report['mention_detection/weak/f1']:.3f}), linking P/R/F1 "
          f"{report['linking/strong/precision']:.3f}/{report['linking/strong/recall']:.3f}/"
          f"{report['linking/strong/f1']:.3f} (weak F1 {report['linking/weak/f1']:.3f}).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  fmt = input_format(FLAGS.input, FLAGS.input_format)
  check_input(FLAGS.input)
  check_output(FLAGS.output, FLAGS.input)
  check_options(workdir=FLAGS.workdir, entities=FLAGS.entities, fmt=fmt, output=FLAGS.output,
                evaluate=FLAGS.evaluate, use_worlds=FLAGS.use_worlds)
  from_terminal = FLAGS.input in (None, STDIN) and sys.stdin.isatty()
  if from_terminal:
    print("Reading texts from the terminal, one per line; Ctrl-D ends.", file=sys.stderr)

  overrides = {}
  if FLAGS.nil_threshold is not None:
    overrides["linker.nil_threshold." + FLAGS.mode] = FLAGS.nil_threshold
  if FLAGS.mention_threshold is not None:
    overrides["linker.mention_threshold"] = FLAGS.mention_threshold
  linker = load_linker(FLAGS.workdir, mode=FLAGS.mode, entities=FLAGS.entities,
                       skip_bad=FLAGS.skip_bad, overrides=overrides)
  rule = linker.link_rule.get(FLAGS.mode)
  logging.info("Linker (%s mode): mention threshold %.3f, %s.", FLAGS.mode,
               linker.mention_threshold,
               f"NIL below {linker.nil_threshold[FLAGS.mode]:.3f}" if rule is None else
               f"NIL where logit + {rule['alpha']:g} log(confidence) < {rule['threshold']:.3f}")
  stats = run_stream(
      lambda records: link_records(linker, records, text_field=FLAGS.text_field,
                                   use_worlds=FLAGS.use_worlds),
      input_path=FLAGS.input, output=FLAGS.output, fmt=fmt, text_field=FLAGS.text_field,
      # Typed texts are linked one by one, as they come, not once a batch is full.
      batch_size=1 if from_terminal else FLAGS.batch_size,
      settings={"workdir": storage.abspath(FLAGS.workdir), "mode": FLAGS.mode,
                "entities": FLAGS.entities, "skip_bad": FLAGS.skip_bad,
                "use_worlds": FLAGS.use_worlds, "overrides": overrides})
  # stdout carries the linked lines when there is no --output.
  print(summary(stats, FLAGS.output), file=sys.stdout if FLAGS.output else sys.stderr)
  if FLAGS.evaluate:
    print(write_report(FLAGS.workdir, FLAGS.input, FLAGS.output, FLAGS.mode))


def console_main() -> None:
  """The `blink-jax-link` console script."""
  # absl's --help shows the program's own file (sys.argv[0]) and its docstring; here that
  # is the console script's wrapper, so this module's usage and flags are made its own.
  sys.modules["__main__"].__doc__ = __doc__
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  cli.run(main)


if __name__ == "__main__":
  console_main()
