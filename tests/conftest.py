"""Test set-up: 8 fake CPU devices, so sharded code runs against 1-device references.

This must run before JAX initialises its backend; conftest.py is imported
before any test module. Single-device code still runs on device 0.
"""

import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)  # `configs` is a top-level folder, not installed.

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Tests never download.
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
