"""--config.mode=pipeline: the stages of `config.pipeline.stages`, in order.

Each stage resumes from its own checkpoints and checks the lineage of what it
reads, so running the pipeline again on a finished workdir only re-evaluates,
and a retrained upstream stage is noticed downstream (`workdir.py`).
"""

from __future__ import annotations

import time

import ml_collections
from absl import logging

from blink_jax.data import sources
from blink_jax.stages import biencoder
from blink_jax.stages import crossencoder
from blink_jax.stages import distill
from blink_jax.stages import index
from blink_jax.stages import linker

# Stage name -> its entry point. "candidates" runs inside the cross-encoder
# and distillation stages, which read them.
RUN = {"biencoder": biencoder.train_and_evaluate,
       "crossencoder": crossencoder.train_and_evaluate,
       "distill": distill.train_and_evaluate,
       "linker": linker.train_and_evaluate,
       "index": lambda config, workdir, data: index.run(config, workdir)}


def run(config: ml_collections.ConfigDict, workdir: str,
        data: sources.LinkingData | None = None) -> dict[str, dict]:
  """Runs the configured stages in order; returns {stage: its result}."""
  names = list(config.pipeline.stages)
  unknown = [n for n in names if n not in RUN]
  if unknown:
    raise ValueError(f"Unknown pipeline stages {unknown}; known: {list(RUN)}.")
  if data is None:
    data = sources.load(config, workdir, documents="linker" in names)
  results = {}
  for name in names:
    t = time.time()
    logging.info("Pipeline: stage %s.", name)
    results[name] = RUN[name](config, workdir, data)
    logging.info("Pipeline: stage %s done in %.0fs.", name, time.time() - t)
  return results
