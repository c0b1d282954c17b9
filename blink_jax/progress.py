"""Progress bars of long loops: one place, silent on every process but 0."""

from __future__ import annotations

from typing import Iterable, TypeVar

import jax
from tqdm.auto import tqdm

T = TypeVar("T")


def progress(total: int, *, desc: str, initial: int = 0) -> tqdm:
  """A bar over `total` steps that the caller advances with `.update(n)`."""
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
              disable=jax.process_index() != 0)


def bar(iterable: Iterable[T], *, desc: str, unit: str = "it") -> Iterable[T]:
  """`iterable` with a transient bar (it leaves no line behind)."""
  return tqdm(iterable, desc=desc, unit=unit, disable=jax.process_index() != 0, leave=False)
