"""Files on a local disk or in Google Cloud Storage (`gs://bucket/...`), one way.

Every workdir, data, index and output path may be a `gs://` URL. Paths stay
strings everywhere (`os.path.join`, `dirname` and `basename` are string
operations and keep `gs://` intact); whatever touches the file system goes
through `etils.epath.Path`, which reads and writes `gs://` with gcsfs, and
through the helpers here for what epath lacks:

* `abspath`: `os.path.abspath` for a local path; a URL unchanged (abspath
  would turn `gs://b/x` into `$PWD/gs:/b/x`).
* `atomic_write`: a reader never sees half a file. Locally a temporary file
  beside the target, fsynced, then `os.replace`; on GCS a single object upload,
  which is atomic by itself (the object appears whole when the upload ends, or
  not at all).
* `append`: GCS objects cannot be appended to, so there it rewrites the object
  (read + one atomic upload): for small files only (the metrics history).
* `check_reachable`: a path on a missing or unreachable bucket fails with one
  line before any work starts (epath's `exists` just says False).
* `local_copy` / `upload_file`: for readers and writers that need a local
  directory (memory-mapped numpy arrays, ScaNN, TensorBoard's event files).
* `local_file`: a gs:// file read by row (a jsonl data set) is downloaded once
  per process, since a ranged request per row would be slow.

Credentials are Google's usual ones (`gcloud auth application-default login`,
or a VM's service account). `STORAGE_EMULATOR_HOST` points gcsfs at a local
emulator (the tests use one).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from etils import epath

from blink_jax import cli

PathLike = str | os.PathLike


class _NoBucketTypeNoise(logging.Filter):
  # gcsfs warns on every call it cannot learn a bucket's type (hierarchical or
  # not) and then carries on as usual: nothing a user can act on.
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Could not determine bucket type")


logging.getLogger("gcsfs").addFilter(_NoBucketTypeNoise())

# gcsfs caches directory listings forever by default; other writers (Orbax's TensorStore,
# the other hosts of a pod) would go unseen: a checkpoint would look absent. Listing anew
# costs one request.
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False


class UnreachableError(cli.UserError, OSError):
  """A `gs://` path whose bucket does not exist or cannot be reached."""


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path (local or gs://)."""
  return epath.Path(os.fspath(p))


def path_object(p: PathLike) -> pathlib.Path | epath.Path:
  """`p` as a pathlib.Path when local (as callers have always had it), else an epath.Path."""
  return path(p) if is_remote(p) else pathlib.Path(p)


def abspath(p: PathLike) -> str:
  """The absolute form of a local path; a URL as it is."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def open(p: PathLike, mode: str = "r", encoding: str | None = None) -> IO[Any]:  # pylint: disable=redefined-builtin
  """Opens a local or gs:// file. On GCS a file opened for writing becomes visible, whole,
  when it is closed, even after an error: `writer` is the atomic way to write one."""
  if "b" in mode:
    return path(p).open(mode)
  return path(p).open(mode, encoding=encoding or "utf-8")


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def listdir(p: PathLike) -> list[str]:
  """The names in directory `p` (a GCS "directory" is a common prefix)."""
  return sorted(x.name for x in path(p).iterdir())


def makedirs(p: PathLike) -> None:
  """Creates directory `p` and its parents; on GCS there is nothing to create."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def remove(p: PathLike) -> None:
  """Deletes file `p` if it exists."""
  with contextlib.suppress(FileNotFoundError):
    path(p).unlink()


def rmtree(p: PathLike) -> None:
  """Deletes directory `p` and everything under it, if it exists."""
  if exists(p):
    path(p).rmtree()


def size(p: PathLike) -> int:
  return getsize_and_mtime(p)[0]


def getsize_and_mtime(p: PathLike) -> tuple[int, int]:
  """(bytes, modification time in ns) of file `p`: what says it has not changed."""
  if not is_remote(p):
    st = os.stat(p)
    return st.st_size, st.st_mtime_ns
  st = path(p).stat()
  return int(st.length), int(st.mtime * 1e9)


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_json(p: PathLike) -> Any:
  with open(p, "r") as f:
    return json.load(f)


def atomic_write(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` so that a reader sees the old file or the new one, never half."""
  with writer(p) as f:
    f.write(data)


def atomic_write_text(p: PathLike, text: str) -> None:
  atomic_write(p, text.encode("utf-8"))


def append(p: PathLike, data: bytes) -> None:
  """Appends `data` to file `p`. On GCS (no appends) the object is rewritten whole, once:
  fine for the small files this is used for (a metrics history)."""
  if not is_remote(p):
    with builtins.open(p, "ab") as f:
      f.write(data)
    return
  old = read_bytes(p) if exists(p) else b""
  atomic_write(p, old + data)


def check_reachable(p: PathLike, *, what: str, write: bool = False) -> None:
  """Fails with one line when `p` is on a bucket that is missing or unreachable.

  With `write`, also that an object can be written there (a probe, deleted at once), so a
  read-only bucket fails now rather than at the first checkpoint. Local paths pass.
  """
  p = os.fspath(p)
  if not is_remote(p):
    return
  if not p.startswith("gs://") or len(p) <= len("gs://"):
    raise UnreachableError(f"{what}={p}: only gs:// URLs are supported")
  bucket = p[len("gs://"):].split("/")[0]
  fs = path(p)._backend.fs(p)  # pylint: disable=protected-access
  try:
    fs.info(bucket)
    if write:
      probe = f"{p.rstrip('/')}/.blink_jax_probe-{uuid.uuid4().hex}"
      fs.pipe_file(probe, b"")
      fs.rm_file(probe)
  except Exception as e:  # pylint: disable=broad-except
    # Anything from a missing bucket (FileNotFoundError) to no network or no credentials.
    reason = ("no such bucket" if isinstance(e, FileNotFoundError)
              else f"{type(e).__name__}: {cli.one_line(e)}")
    raise UnreachableError(f"{what}={p}: cannot reach bucket gs://{bucket} ({reason})"
                           ) from None


def download_dir(src: PathLike, dst: str) -> None:
  """Copies the files under directory `src` (local or gs://) into local directory `dst`."""
  src = os.fspath(src).rstrip("/")
  for root, _, names in path(src).walk():
    rel = os.path.relpath(os.fspath(root), src) if os.fspath(root) != src else ""
    if is_remote(src):
      # fsspec's walk yields bucket paths without the scheme.
      rel = os.fspath(root)[len(src) - len("gs://"):].lstrip("/")
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for name in names:
      path(os.path.join(src, rel, name) if rel else os.path.join(src, name)).copy(
          os.path.join(dst, rel, name), overwrite=True)


@contextlib.contextmanager
def writer(p: PathLike) -> Iterator[IO[bytes]]:
  """A binary file that becomes `p`, whole, when the block ends without an error; on an
  error nothing is written. Locally a temporary file, fsynced and renamed; on GCS an upload
  that is finished on success and abandoned on an error (a plain `with open(...)` would
  finish it either way, leaving half an object)."""
  p = os.fspath(p)
  if not is_remote(p):
    tmp = f"{p}.tmp.{os.getpid()}"
    try:
      with builtins.open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, p)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
    return
  f = open(p, "wb")
  try:
    yield f
  except BaseException:
    try:
      f.discard()  # Cancels a resumable upload already begun.
    except Exception:  # pylint: disable=broad-except
      pass  # Best effort: an unfinished upload never becomes an object, and expires.
    f.closed = True  # Never finished: not by close(), nor when the object is collected.
    raise
  f.close()


def upload_file(src: str, dst: PathLike) -> None:
  """Copies local file `src` to `dst` (local or gs://), atomically (see `writer`)."""
  with builtins.open(src, "rb") as f, writer(dst) as out:
    shutil.copyfileobj(f, out, 1 << 22)


_DOWNLOADS: dict[tuple[str, int, int], str] = {}  # (URL, size, mtime) -> local copy.
_DOWNLOAD_DIR: list[str] = []  # Made on first use, deleted at exit.


def local_file(p: PathLike) -> str:
  """A local path holding file `p`'s bytes: `p` itself if local, else a download made once
  per process (again if the object changed), deleted at exit."""
  p = os.fspath(p)
  if not is_remote(p):
    return p
  key = (p, *getsize_and_mtime(p))
  if key not in _DOWNLOADS:
    if not _DOWNLOAD_DIR:
      _DOWNLOAD_DIR.append(tempfile.mkdtemp(prefix="blink_jax.data."))
      atexit.register(shutil.rmtree, _DOWNLOAD_DIR[0], ignore_errors=True)
    local = os.path.join(_DOWNLOAD_DIR[0], f"{len(_DOWNLOADS)}-{os.path.basename(p)}")
    path(p).copy(local, overwrite=True)
    _DOWNLOADS[key] = local
  return _DOWNLOADS[key]


@contextlib.contextmanager
def local_copy(src: PathLike) -> Iterator[str]:
  """A local directory holding `src`'s files: `src` itself if it is local, else a temporary
  download, deleted at the end."""
  if not is_remote(src):
    yield os.fspath(src)
    return
  with tempfile.TemporaryDirectory(prefix="blink_jax.") as tmp:
    download_dir(src, tmp)
    yield tmp


