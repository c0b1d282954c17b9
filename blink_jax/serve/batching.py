"""Dynamic batching: requests that arrive close together run as one model call.

One worker thread makes every model call. JAX functions are not meant to be
called from many threads at once, and on a few cores one call over 32 texts
does far more per second than 32 calls over one (the model functions see
fixed-size, padded batches). A request is a `Job`; the worker takes the
oldest job, then gathers more for up to `max_wait_s` *from that job's
arrival*, up to `max_items` texts or mentions, and runs jobs of the same kind
(`key`) together. A job that waited while the previous batch ran has already
used its wait, so a busy server never adds latency to batch, and an idle one
adds at most `max_wait_s`.

Memory stays bounded: `submit` refuses work once `max_queued` items wait
(`QueueFull`, a 429 to the client).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from absl import logging


class QueueFull(Exception):
  """Too much work is waiting; the client should retry later."""


class Closed(RuntimeError):
  """The batcher has stopped (the server is shutting down)."""


@dataclasses.dataclass
class Job:
  key: Hashable               # Jobs with equal keys can share a call, e.g. ("link", "fast").
  items: Sequence[Any]        # Texts or mentions.
  options: dict               # Per-job settings the runner reads (e.g. top_k).
  future: concurrent.futures.Future
  arrived: float              # time.monotonic() at submit.


# run(key, jobs) -> one result per job, in order.
Runner = Callable[[Hashable, list[Job]], list[Any]]


class Batcher:
  """Runs submitted jobs in batches on one worker thread."""

  def __init__(self, run: Runner, *, max_wait_s: float = 0.005, max_items: int = 32,
               max_queued: int = 1024):
    self._run, self.max_wait_s, self.max_items = run, max_wait_s, max_items
    self.max_queued = max_queued
    self._pending: collections.deque[Job] = collections.deque()
    self._queued = 0
    self._cond = threading.Condition()
    self._closed = False
    self.batches = 0  # Model calls (one per key per batch) and the items they ran.
    self.items = 0
    self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
    self._thread.start()

  @property
  def queued(self) -> int:
    return self._queued

  def submit(self, key: Hashable, items: Sequence[Any], **options) -> concurrent.futures.Future:
    """A future of this job's result; raises QueueFull when too much waits."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    with self._cond:
      if self._closed:
        raise Closed("The server is shutting down.")
      if self._queued and self._queued + len(items) > self.max_queued:
        raise QueueFull(f"{self._queued} texts and mentions are waiting for the model "
                        f"(at most {self.max_queued}); retry shortly.")
      self._pending.append(Job(key, items, options, future, time.monotonic()))
      self._queued += len(items)
      self._cond.notify()
    return future

  def close(self, timeout: float | None = 10.0) -> None:
    """Stops the worker; jobs still waiting fail with Closed."""
    with self._cond:
      self._closed = True
      self._cond.notify()
    self._thread.join(timeout)
    with self._cond:
      for job in self._pending:
        if job.future.set_running_or_notify_cancel():
          job.future.set_exception(Closed("The server is shutting down."))
      self._pending.clear()

  # ------------------------------------------------------------------ worker
  def _next_batch(self) -> list[Job] | None:
    """The next jobs to run (at least one), or None once closed."""
    with self._cond:
      while not self._pending and not self._closed:
        self._cond.wait()
      if self._closed:
        return None
      deadline = self._pending[0].arrived + self.max_wait_s
      while self._queued < self.max_items and not self._closed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          break
        self._cond.wait(remaining)
      jobs, n = [], 0
      # The oldest first; a job that would overflow the batch waits for the
      # next one, unless it is the first (a request may exceed max_items).
      while self._pending and (not jobs or n + len(self._pending[0].items) <= self.max_items):
        job = self._pending.popleft()
        self._queued -= len(job.items)
        # False when the client went away (its future was cancelled): skip it.
        if job.future.set_running_or_notify_cancel():
          jobs.append(job)
          n += len(job.items)
      return jobs

  def _loop(self) -> None:
    while (jobs := self._next_batch()) is not None:
      by_key: dict[Hashable, list[Job]] = {}
      for job in jobs:
        by_key.setdefault(job.key, []).append(job)
      for key, group in by_key.items():
        self._run_group(key, group)

  def _run_group(self, key: Hashable, jobs: list[Job]) -> None:
    try:
      results = self._run(key, jobs)
    except Exception as e:  # pylint: disable=broad-except
      if len(jobs) == 1:
        jobs[0].future.set_exception(e)
        return
      # One job may have made the call fail: run each alone, so that only
      # that job fails.
      logging.exception("A batch of %d jobs failed; running them one by one.", len(jobs))
      for job in jobs:
        self._run_group(key, [job])
      return
    self.batches += 1
    self.items += sum(len(j.items) for j in jobs)
    for job, result in zip(jobs, results):
      job.future.set_result(result)

