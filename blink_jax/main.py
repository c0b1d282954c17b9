"""Entry point: python -m blink_jax.main --config=configs/<name>.py --workdir=DIR.

Parses flags, starts multi-process JAX when asked, and hands the config to
the function of `config.mode`. Everything below is importable without absl.
A mistake in the config or its data ends the run with one line (`cli`;
--debug shows the traceback).
"""

import importlib
import os

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from blink_jax import cli
from blink_jax import storage
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


def check(config) -> None:
  """Fails before any work (and before an encoder is fetched) on an unknown mode or
  missing data."""
  if config.mode not in MODES:
    raise ValueError(f"Unknown config.mode {config.mode!r}; known: {sorted(MODES)}.")
  sources.check(config)


def check_storage(config, workdir: str) -> None:
  """Fails with one line when a gs:// path the run writes is on a missing or unreachable
  bucket (or one it cannot write to): before any work, not at the first checkpoint."""
  storage.check_reachable(workdir, what="--workdir", write=True)
  for key, path in (("data.dir", config.data.get("dir")), ("index.dir", config.index.get("dir"))):
    if path:
      storage.check_reachable(path, what=f"--config.{key}", write=True)
  if config.data.kind == "zeshel":
    tfds_dir = config.data.get("tfds_dir") or os.path.join(workdir, "tfds")
    if storage.is_remote(tfds_dir) or storage.is_remote(config.data.get("zeshel_dir") or ""):
      raise cli.UserError(
          f"Zeshel's raw release (data.zeshel_dir) and tfds build (data.tfds_dir, default "
          f"WORKDIR/tfds, here {tfds_dir}) must be local or shared-filesystem paths, not gs://: "
          "set --config.data.tfds_dir=PATH")


def run(config, workdir: str):
  """Runs `config.mode`; the same call a notebook makes."""
  check(config)
  module, fn = MODES[config.mode].split(":")
  return getattr(importlib.import_module(module), fn)(config, workdir)


def loaded_config() -> ml_collections.ConfigDict:
  """--config, or a one-line error when its file could not be loaded.

  ml_collections defers a loading error until the config is first used, and then reports
  it over several lines; the file name and the cause are what a user needs.
  """
  config = FLAGS.config
  if isinstance(config, ml_collections.ConfigDict):
    return config
  path = config_flags.get_config_filename(FLAGS["config"])
  if not os.path.exists(path):
    raise cli.UserError(f"--config={path}: no such file")
  error = config._error  # pylint: disable=protected-access
  raise cli.UserError(f"--config={path}: cannot be loaded: {cli.one_line(error)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = loaded_config()
  # Before the config is logged: logging it reads each encoder's shape, which for a hub
  # encoder (Zeshel's bert-base-uncased) means a download, and offline a network error.
  check(config)
  check_storage(config, FLAGS.workdir)
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
  logging.info("Config:\n%s", bert_checkpoint.describe(config))
  run(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
