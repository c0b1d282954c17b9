"""Progress of long loops, in one place: a bar on a terminal, lines in a log.

A tqdm bar redraws itself with carriage returns; written to a file (a job's
log, `2> run.log`) it becomes one endless line. So the bar is drawn only when
the stream is a terminal that moves its cursor (not TERM=dumb); otherwise
progress is a plain, newline-terminated line now and then ("train: 30/120
(25%) [00:12] loss=0.310"): at each tenth of the loop, or after
`EVERY_SECONDS` without one. Neither shows anything in a loop's first `delay`
seconds, so the many short loops nested in a long one (encoding each batch
of texts the linker links) stay quiet: a nested bar that is drawn and erased
costs a terminal a line. Every JAX process but 0 is silent, so a pod's log
has one copy.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Collection, Iterator, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

DELAY = 5.0  # Seconds a loop runs before its first line.
EVERY_SECONDS = 60.0  # Longest gap between two lines of a slow loop.


def progress(total: int, *, desc: str, initial: int = 0, unit: str = "it",
             unit_scale: bool = False, leave: bool = True, disable: bool = False,
             stream: TextIO | None = None, delay: float = DELAY) -> tqdm | LogLines:
  """A counter over `total` units that the caller advances with `.update(n)`.

  A tqdm bar when `stream` (default: stderr) is a terminal, else `LogLines`;
  both show nothing in the first `delay` seconds, have `.update`,
  `.set_postfix`, `.n`, `.total`, `.close` and work in `with`.
  """
  stream = sys.stderr if stream is None else stream
  silent = disable or not _main_process()
  if not silent and _is_terminal(stream):
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                leave=leave, file=stream, dynamic_ncols=True, delay=delay)
  return LogLines(total, desc=desc, initial=initial, unit=unit, unit_scale=unit_scale,
                  stream=stream, delay=delay, silent=silent)


def bar(items: Collection[T], *, desc: str, unit: str = "it",
        stream: TextIO | None = None, delay: float = DELAY) -> Iterator[T]:
  """`items` with the progress of a loop over them; a terminal's bar is erased at the end."""
  with progress(len(items), desc=desc, unit=unit, leave=False, stream=stream,
                delay=delay) as counter:
    for item in items:
      yield item
      counter.update(1)


class LogLines:
  """Progress as plain lines: for streams that are not a terminal."""

  def __init__(self, total: int, *, desc: str, initial: int = 0, unit: str = "it",
               unit_scale: bool = False, stream: TextIO, delay: float = DELAY,
               silent: bool = False):
    self.total, self.n, self.desc = total, initial, desc
    self._unit, self._unit_scale = unit, unit_scale
    self._stream, self._delay, self._silent = stream, delay, silent
    self._postfix = ""
    self._start = self._last_time = time.monotonic()
    self._last_n = initial  # `n` at the last line written (or the start).
    self._wrote = self._closed = False

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.monotonic()
    if self._silent or now - self._start < self._delay:
      return
    tenth = max(self.total // 10, 1)
    if self.n // tenth > self._last_n // tenth or now - self._last_time >= EVERY_SECONDS:
      self._write(now)

  def set_postfix(self, **values: object) -> None:
    """Shown at the end of the next line, as tqdm shows it beside the bar."""
    self._postfix = " ".join(f"{k}={v}" for k, v in values.items())

  def close(self) -> None:
    """Writes the final count if the loop was long enough to report on."""
    if self._closed:
      return
    self._closed = True
    now = time.monotonic()
    long_enough = self._wrote or now - self._start >= self._delay
    if not self._silent and long_enough and self.n != self._last_n:
      self._write(now)

  def __enter__(self) -> LogLines:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _write(self, now: float) -> None:
    size = tqdm.format_sizeof if self._unit_scale else str
    unit = "" if self._unit == "it" else self._unit if self._unit_scale else f" {self._unit}"
    percent = 100 * self.n // self.total if self.total else 100
    line = (f"{self.desc}: {size(self.n)}/{size(self.total)}{unit} ({percent}%) "
            f"[{tqdm.format_interval(now - self._start)}]")
    self._stream.write(f"{line} {self._postfix}".rstrip() + "\n")
    self._stream.flush()
    self._last_n, self._last_time, self._wrote = self.n, now, True


def _main_process() -> bool:
  # jax only if the caller already uses it: link_io streams files without it.
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def _is_terminal(stream: TextIO) -> bool:
  # A dumb terminal (Emacs' shell) ignores the cursor moves a bar redraws itself with.
  if os.environ.get("TERM") == "dumb":
    return False
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False
