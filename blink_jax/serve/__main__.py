"""Serve a trained linker over HTTP: python -m blink_jax.serve --workdir=W.

  python -m blink_jax.serve --workdir=/tmp/blink_demo --port=8000
  curl -s localhost:8000/readyz
  curl -s localhost:8000/link -H 'content-type: application/json' \\
      -d '{"texts": ["Later that year, Gegwe was often seen near the river."], "top_k": 3}'

FastAPI on uvicorn (see README, "Serve over HTTP"); the routes and the
batching worker are in `app.py`, the request limits in `schemas.Limits`.
"""

from __future__ import annotations


from absl import app
from absl import flags

from blink_jax import cli
from blink_jax import storage
from blink_jax import workdir as workdir_lib
from blink_jax.inference import linker as linker_lib
from blink_jax.serve import app as app_lib
from blink_jax.serve import schemas

_LIMITS = schemas.Limits()
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A workdir with a trained linker "
                    "(--config.mode=train_linker, or the demo).")
flags.DEFINE_string("entities", None, "A catalogue jsonl to link against instead of the "
                    "training one (encoded once, cached in the workdir).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_enum("mode", "fast", linker_lib.MODES, "Requests' default mode.")
flags.DEFINE_bool("full_mode", True, "Load the cross-encoder (when the workdir has one) so "
                  "that requests may ask for full mode; --nofull_mode saves its memory.")
flags.DEFINE_bool("warm_up", True, "Compile every batch shape before reporting ready, so "
                  "that no request waits for compilation.")
flags.DEFINE_float("max_wait_ms", 5.0, "How long a request may wait for others to be "
                   "batched with it.")
flags.DEFINE_integer("max_batch", 32, "Texts (or mentions) per model call, at most.")
# On this project's 2-core CPU (the demo linker; BENCHMARKS.md, "Serving"),
# detection windows cost 13 ms a row in calls of up to 16 rows and 21-25 ms in
# calls of 32-64, and cross-encoder pairs 5.5 ms a row in calls of 16-32 and
# 8-9 ms in calls of 64-256 (which also take 600 MB more at 256): the training
# configs' batch sizes (64 windows, 128 mentions, 256 pairs) suit accelerators,
# not CPUs. 0 keeps the workdir config's.
flags.DEFINE_integer("window_batch", 16, "Text windows per mention-detection call "
                     "(linker.batch_size); 0: the workdir config's.")
flags.DEFINE_integer("mention_batch", 16, "Mentions per bi-encoder call (eval.batch_size); "
                     "0: the workdir config's.")
flags.DEFINE_integer("pair_batch", 32, "Mention-entity pairs per cross-encoder call "
                     "(cross.eval_batch_size, full mode); 0: the workdir config's.")
flags.DEFINE_float("mention_threshold", None, "Override the calibrated mention threshold "
                   "(span logit), as blink_jax.link's flag.")
flags.DEFINE_integer("max_texts", _LIMITS.max_texts, "Texts per /link request, at most.")
flags.DEFINE_integer("max_text_chars", _LIMITS.max_text_chars, "Characters per text.")
flags.DEFINE_integer("max_mentions", _LIMITS.max_mentions, "Mentions per /disambiguate "
                     "request, at most.")
flags.DEFINE_integer("max_context_chars", _LIMITS.max_context_chars, "Characters per "
                     "mention and per context side.")
flags.DEFINE_integer("max_body_bytes", _LIMITS.max_body_bytes, "Request body size, at most.")
flags.DEFINE_integer("max_queued", _LIMITS.max_queued, "Texts and mentions that may wait "
                     "for the model; past that, requests get 429.")
flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning", "error"],
                  "uvicorn's log level.")
flags.DEFINE_bool("access_log", False, "Log every request (uvicorn's access log).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Fail now, before listening, on an unreachable bucket, a workdir without a linker or a
  # missing catalogue; the model itself loads in the background once the server runs.
  storage.check_reachable(FLAGS.workdir, what="--workdir")
  if FLAGS.entities:
    storage.check_reachable(FLAGS.entities, what="--entities")
  try:
    workdir_lib.load_config(FLAGS.workdir, "linker")
  except FileNotFoundError as e:
    raise cli.UserError(str(e)) from None
  if FLAGS.entities and not storage.isfile(FLAGS.entities):
    raise cli.UserError(f"--entities={FLAGS.entities}: no such file")
  import uvicorn  # pylint: disable=g-import-not-at-top
  limits = schemas.Limits(
      max_texts=FLAGS.max_texts, max_text_chars=FLAGS.max_text_chars,
      max_mentions=FLAGS.max_mentions, max_context_chars=FLAGS.max_context_chars,
      max_body_bytes=FLAGS.max_body_bytes, max_queued=FLAGS.max_queued)
  overrides = {}
  if FLAGS.window_batch:
    overrides["linker.batch_size"] = FLAGS.window_batch
  if FLAGS.mention_batch:
    overrides["eval.batch_size"] = FLAGS.mention_batch
  if FLAGS.pair_batch:
    overrides["cross.eval_batch_size"] = FLAGS.pair_batch
  if FLAGS.mention_threshold is not None:
    overrides["linker.mention_threshold"] = FLAGS.mention_threshold
  settings = app_lib.Settings(
      workdir=FLAGS.workdir, entities=FLAGS.entities, mode=FLAGS.mode,
      full_mode=FLAGS.full_mode, warm_up=FLAGS.warm_up, max_wait_ms=FLAGS.max_wait_ms,
      max_batch=FLAGS.max_batch, limits=limits, overrides=overrides)
  uvicorn.run(app_lib.create_app(settings), host=FLAGS.host, port=FLAGS.port,
              log_level=FLAGS.log_level, access_log=FLAGS.access_log)


if __name__ == "__main__":
  cli.run(main)
