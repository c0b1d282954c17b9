"""A real GCS server on localhost for the tests: PyPI `gcp-storage-emulator`, pure Python
(run by gcs_server.py, which adds the generation header TensorStore needs).

`emulator()` starts it as a subprocess on a free port with one bucket, points gcsfs
(STORAGE_EMULATOR_HOST) and TensorStore, which Orbax writes arrays with
(TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING), at it, and stops it at the end.
`env(url)` is the same environment for a subprocess. Nothing leaves localhost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

BUCKET = "bkt"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(url: str) -> dict[str, str]:
  """The environment variables that send gs:// traffic to the emulator at `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy"}


def _forget_filesystems() -> None:
  """gcsfs and epath cache their file system objects, which hold the server's address."""
  import gcsfs  # pylint: disable=g-import-not-at-top
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


@contextlib.contextmanager
def emulator(monkeypatch) -> Iterator[str]:
  """Runs the emulator for the block; yields its URL, with the environment set."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(__file__), "gcs_server.py"), "start",
       "--host=127.0.0.1", f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=1).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError("the GCS emulator did not start") from None
        time.sleep(0.1)
    for k, v in env(url).items():
      monkeypatch.setenv(k, v)
    _forget_filesystems()
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=10)
    _forget_filesystems()
