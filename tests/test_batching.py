"""The server's dynamic batcher: which jobs run together, limits, failures, shutdown.

The runner here is a plain function that records its calls; a threading.Event
holds the worker inside a call, so that jobs submitted meanwhile are all
waiting when it returns: which jobs share the next call is then fixed, not
a matter of timing.
"""

import concurrent.futures
import threading

import pytest

from blink_jax.serve import batching
from blink_jax.serve.app import _with_top_k


class Recorder:
  """A runner that returns each item doubled and records every call's jobs."""

  def __init__(self):
    self.calls: list[tuple[object, list[list[int]]]] = []
    self.entered = threading.Event()   # Set once the worker is inside a call.
    self.release = threading.Event()   # The worker leaves its first call when set.
    self.release.set()

  def __call__(self, key, jobs):
    self.calls.append((key, [list(j.items) for j in jobs]))
    self.entered.set()
    self.release.wait(30)
    if any(x == "boom" for j in jobs for x in j.items):
      raise ValueError("boom is not an item")
    return [[2 * x for x in j.items] for j in jobs]


def _hold(batcher: batching.Batcher, run: Recorder) -> concurrent.futures.Future:
  """Puts the worker inside a call that lasts until run.release is set."""
  run.release.clear()
  held = batcher.submit("hold", [0])
  assert run.entered.wait(30)
  return held


def test_jobs_waiting_together_run_in_one_call_and_get_their_own_results():
  run = Recorder()
  b = batching.Batcher(run, max_wait_s=0.0, max_items=100)
  held = _hold(b, run)
  futures = [b.submit("a", [1, 2]), b.submit("a", [3]), b.submit("a", [4, 5, 6])]
  run.release.set()
  assert [f.result(30) for f in futures] == [[2, 4], [6], [8, 10, 12]]
  assert held.result(30) == [0]
  assert run.calls == [("hold", [[0]]), ("a", [[1, 2], [3], [4, 5, 6]])]
  assert (b.batches, b.items) == (2, 7)
  b.close()


def test_a_batch_holds_at_most_max_items_and_keys_run_apart():
  run = Recorder()
  b = batching.Batcher(run, max_wait_s=0.0, max_items=4)
  _hold(b, run)
  futures = [b.submit("a", [1, 2, 3]), b.submit("b", [4]), b.submit("a", [5, 6]),
             b.submit("a", [7, 8, 9, 10, 11])]  # Larger than max_items: runs alone.
  run.release.set()
  assert [f.result(30) for f in futures] == [[2, 4, 6], [8], [10, 12], [14, 16, 18, 20, 22]]
  # Oldest first; [5, 6] would make 6 items with the first two, so it starts
  # the next batch, and the 5-item job is a batch of its own.
  assert run.calls[1:] == [("a", [[1, 2, 3]]), ("b", [[4]]), ("a", [[5, 6]]),
                           ("a", [[7, 8, 9, 10, 11]])]
  b.close()


def test_a_failing_job_fails_alone():
  run = Recorder()
  b = batching.Batcher(run, max_wait_s=0.0, max_items=100)
  _hold(b, run)
  good, bad, other = b.submit("a", [1]), b.submit("a", ["boom"]), b.submit("a", [3])
  run.release.set()
  assert good.result(30) == [2] and other.result(30) == [6]
  with pytest.raises(ValueError, match="boom"):
    bad.result(30)
  # The batch failed, then each job ran alone.
  assert run.calls[1:] == [("a", [[1], ["boom"], [3]]), ("a", [[1]]), ("a", [["boom"]]),
                           ("a", [[3]])]
  b.close()


def test_too_much_waiting_is_refused_and_cancelled_jobs_are_skipped():
  run = Recorder()
  b = batching.Batcher(run, max_wait_s=0.0, max_items=100, max_queued=5)
  _hold(b, run)
  kept = b.submit("a", [1, 2, 3])
  gone = b.submit("a", [4, 5])
  with pytest.raises(batching.QueueFull, match="at most 5"):
    b.submit("a", [6])
  assert b.queued == 5
  assert gone.cancel()  # The client went away before its turn.
  run.release.set()
  assert kept.result(30) == [2, 4, 6]
  assert run.calls[1:] == [("a", [[1, 2, 3]])]
  assert b.queued == 0
  b.close()


def test_close_fails_the_jobs_still_waiting():
  run = Recorder()
  b = batching.Batcher(run, max_wait_s=0.0, max_items=100)
  held = _hold(b, run)
  waiting = b.submit("a", [1])
  closer = threading.Thread(target=b.close)
  closer.start()
  run.release.set()
  closer.join(30)
  assert held.result(30) == [0]
  with pytest.raises(batching.Closed):
    waiting.result(30)
  with pytest.raises(batching.Closed):
    b.submit("a", [2])


def test_a_job_cut_to_its_own_top_k():
  span = lambda k: {"mention": "m", "entity_id": 1, "nil": False,
                    "candidates": [{"entity_id": i} for i in range(k)]}
  # /disambiguate: one span per mention; /link: a list of spans per text.
  assert _with_top_k([span(5)], 2) == [span(2)]
  assert _with_top_k([[span(5), span(5)], []], 3) == [[span(3), span(3)], []]
  assert _with_top_k([[span(5)]], 0) == [[{"mention": "m", "entity_id": 1, "nil": False}]]
