"""Runs gcp-storage-emulator (same arguments), with the one header it lacks added.

Real GCS sends an object's generation as the `x-goog-generation` header of a download;
TensorStore (Orbax's array writer) needs it to update an OCDBT manifest ("Malformed
StorageGeneration" without it). The emulator keeps the generation in the object's metadata
but does not send it: this adds it, and changes nothing else.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
  except Exception:  # pylint: disable=broad-except
    pass  # A missing object: the emulator's own handler answers 404.
  return _download(request, response, storage, *args, **kwargs)


objects.download = _download_with_generation

# The server module builds its routes from `objects.download` when imported: after the patch.
from gcp_storage_emulator import __main__ as emulator_main  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  emulator_main.main(sys.argv[1:])
