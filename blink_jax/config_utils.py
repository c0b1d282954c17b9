"""Helpers for Python configs: `configs/x.py:arg` strings and paths.

`--config=configs/demo.py:runlocal,size=base` hands the string
"runlocal,size=base" to `get_config`; `parse_arg` turns it into a typed
ConfigDict using the defaults the config declares, so a typo or a wrong type
fails at start-up, not an hour into a run.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "a=1,flag,b=x" into a ConfigDict typed after `defaults`.

  A bare name sets a boolean default to True. Unknown names are errors.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config arg {key!r}; known: {sorted(defaults)}.")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"Config arg {key!r} needs a value ({key}=...).")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config arg {key}={value!r} is not a boolean.")
      out[key] = value.lower() in ("true", "1")
    elif default is None:
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


# The directory holding `blink_jax/` and `configs/`: the repository in a
# checkout or an editable install, site-packages otherwise.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of "configs/demo.py:runlocal" (a file, then an optional arg), as
  --config=... gives it, for notebooks and scripts that do not use absl flags.

  A relative path not found from the cwd is taken from the repository root,
  so "configs/demo.py" works from any directory (a notebook's, say).
  """
  path, _, arg = spec.partition(":")
  if not os.path.exists(path) and not os.path.isabs(path):
    path = os.path.join(ROOT, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"No config file {spec.partition(':')[0]!r} from the cwd "
                            f"or {ROOT}.")
  module_spec = importlib.util.spec_from_file_location(
      "config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}: the one flattening of nested dicts and configs."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{prefix}{key}{sep}", sep))
    else:
      out[f"{prefix}{key}"] = value
  return out
