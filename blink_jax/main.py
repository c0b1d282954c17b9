"""Entry point: python -m blink_jax.main --config=configs/<name>.py --workdir=DIR.

Parses flags, starts multi-process JAX when asked, and hands the config to
the function of `config.mode`. Everything below is importable without absl.
"""

import importlib
import logging as pylogging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from blink_jax.data import sources
from blink_jax.models import bert_checkpoint

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/demo.py or configs/demo.py:runlocal.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for data, checkpoints and metrics.")
flags.DEFINE_bool("jax_distributed", False,
                  "Call jax.distributed.initialize() (TPU pods, multi-node GPU); "
                  "its address/size/rank come from the flags below or the cluster.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's rank.")
flags.mark_flags_as_required(["config", "workdir"])

# config.mode -> "module:function(config, workdir)".
MODES = {
    "demo": "blink_jax.demo:run",
    "pipeline": "blink_jax.stages.pipeline:run",
    "train_biencoder": "blink_jax.stages.biencoder:train_and_evaluate",
    "train_crossencoder": "blink_jax.stages.crossencoder:train_and_evaluate",
    "distill": "blink_jax.stages.distill:train_and_evaluate",
    "train_linker": "blink_jax.stages.linker:train_and_evaluate",
    "index": "blink_jax.stages.index:run",
}


def run(config, workdir: str):
  """Runs `config.mode`; the same call a notebook makes."""
  if config.mode not in MODES:
    raise ValueError(f"Unknown config.mode {config.mode!r}; known: {sorted(MODES)}.")
  sources.check(config)
  module, fn = MODES[config.mode].split(":")
  return getattr(importlib.import_module(module), fn)(config, workdir)


class _QuietLibraries(pylogging.Filter):
  """Drops INFO lines of chatty libraries (Orbax logs every save in detail)."""

  NOISY = ("/orbax/", "/tensorboardX/")

  def filter(self, record: pylogging.LogRecord) -> bool:
    return (record.levelno >= pylogging.WARNING
            or not any(n in record.pathname for n in self.NOISY))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.jax_distributed or FLAGS.coordinator_address:
    # CPU processes (tests, laptops) need a collectives backend; accelerators
    # ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("JAX: process %d/%d, %d local / %d global devices (%s).",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  logging.info("Config:\n%s", bert_checkpoint.describe(FLAGS.config))
  run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
