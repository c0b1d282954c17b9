"""Training input on grain: a run of steps' batches, tokenized ahead in worker threads.

    loader = StepLoader(indices, tokenize, num_threads=2, prefetch=2)
    for step, batch in loader.iterate(start, stop): ...

Step s's batch is a pure function of s (`pipeline.StepSampler`): `indices(s)`
gives this process's rows of the global batch (the per-process index
sampler), `tokenize(rows)` reads and tokenizes them (the transform). grain
runs the transform for the next `prefetch` steps in `num_threads` threads
while the devices train, so input is off the critical path. Because a batch
depends on the step alone, the iterator's state is the next step: a
checkpoint stores it (`state`) and a resumed run starts there, exactly.

A stage whose batches read state that changes during training (the
bi-encoder's hard negatives, re-mined at epoch starts) names those steps in
`restart_at`: no batch at or past one is built before the train loop reaches
it, so the change is always seen.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import grain
import numpy as np

Batch = Mapping[str, np.ndarray]


class StepLoader:
  """The batches of steps [start, stop), built ahead in threads, in step order."""

  def __init__(self, indices: Callable[[int], np.ndarray],
               tokenize: Callable[[np.ndarray], Batch], *, num_threads: int = 2,
               prefetch: int = 2, restart_at: Callable[[int], bool] | None = None):
    self.indices, self.tokenize = indices, tokenize
    self.num_threads, self.prefetch = num_threads, prefetch
    self.restart_at = restart_at or (lambda step: False)

  def batch(self, step: int) -> Batch:
    """Step `step`'s batch, built here (what each worker thread runs)."""
    return self.tokenize(self.indices(step))

  def _segment_end(self, start: int, stop: int) -> int:
    end = start + 1
    while end < stop and not self.restart_at(end):
      end += 1
    return end

  def iterate(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
    """(step, batch) for step in [start, stop); lazily, segment by segment."""
    step = start
    while step < stop:
      end = self._segment_end(step, stop)
      if self.num_threads <= 0:
        segment = map(self.batch, range(step, end))
      else:
        dataset = grain.MapDataset.range(step, end).map(self.indices).map(self.tokenize)
        segment = iter(dataset.to_iter_dataset(grain.ReadOptions(
            num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)))
      for s, batch in zip(range(step, end), segment):
        yield s, batch
      step = end

  @staticmethod
  def state(next_step: int) -> dict[str, Any]:
    """The iterator's state as a checkpoint stores it."""
    return {"next_step": int(next_step)}
