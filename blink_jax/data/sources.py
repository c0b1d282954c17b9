"""Loads a run's data, whatever its kind, into one `LinkingData`.

`config.data.kind` selects:
  * "synthetic": the generated Zeshel-style worlds (written to
    `data.dir`, default WORKDIR/data); evaluation on the unseen test worlds.
  * "jsonl": BLINK-format files: `data.entities` (catalogue), `data.train`
    (mentions; may be empty for evaluation only) and `data.eval` (comma-separated
    mention files, each evaluated separately, named after the file).
  * "zeshel": the Zeshel release in `data.zeshel_dir` (see `zeshel.py`),
    train on the train worlds, evaluate on val and test worlds.
`data.skip_bad` skips (and counts) bad records instead of failing.

Every set is a `records.Records`: labels and worlds in memory, the records
themselves read by row, so each process reads only the rows it tokenizes.
"""

from __future__ import annotations

import dataclasses
import os
import jax
import ml_collections
from jax.experimental import multihost_utils

from blink_jax.data import jsonl
from blink_jax.data import synthetic
from blink_jax.data.jsonl import Entity, Mention
from blink_jax.data.records import Records


@dataclasses.dataclass
class LinkingData:
  """A catalogue, training mentions and named evaluation sets."""

  entities: Records[Entity]
  train: Records[Mention]
  evals: dict[str, Records[Mention]]

  def entities_for(self, mentions: Records[Mention]) -> Records[Entity]:
    """The catalogue restricted to the worlds of `mentions` (all if no worlds)."""
    return self.entities.in_worlds(set(mentions.worlds))


def synthetic_paths(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Writes the synthetic worlds (unless already there); returns their paths."""
  data_dir = config.data.get("dir") or os.path.join(workdir, "data")
  cfg = synthetic.SyntheticConfig(**config.data.synthetic)
  return {k: os.fspath(v) for k, v in synthetic.ensure_written(cfg, data_dir).items()}


def _eval_name(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".jsonl", ".mentions"):
    name = name[:-len(suffix)] if name.endswith(suffix) else name
  return name


def load(config: ml_collections.ConfigDict, workdir: str) -> LinkingData:
  """The data of `config.data`, validated against the catalogue."""
  d = config.data
  skip = bool(d.get("skip_bad", False))
  if d.kind == "synthetic":
    paths = synthetic_paths(config, workdir)
    entities = jsonl.open_entities(paths["entities"], skip_bad=skip)
    ids = set(entities.labels.tolist())
    return LinkingData(
        entities=entities,
        train=jsonl.open_mentions(paths["train_mentions"], catalogue_ids=ids, skip_bad=skip),
        evals={"test": jsonl.open_mentions(paths["test_mentions"], catalogue_ids=ids,
                                           skip_bad=skip)})
  if d.kind == "jsonl":
    if not d.get("entities"):
      raise ValueError("data.kind='jsonl' needs --config.data.entities=PATH.")
    entities = jsonl.open_entities(d.entities, skip_bad=skip)
    ids = set(entities.labels.tolist())
    train = (jsonl.open_mentions(d.train, catalogue_ids=ids, skip_bad=skip)
             if d.get("train") else Records.of([]))
    evals = {_eval_name(p): jsonl.open_mentions(p, catalogue_ids=ids, skip_bad=skip)
             for p in filter(None, (x.strip() for x in d.get("eval", "").split(",")))}
    return LinkingData(entities=entities, train=train, evals=evals)
  if d.kind == "zeshel":
    from blink_jax.data import zeshel  # pylint: disable=g-import-not-at-top
    if not d.get("zeshel_dir"):
      raise ValueError("data.kind='zeshel' needs --config.data.zeshel_dir=PATH "
                       "(the unpacked Zeshel release).")
    tfds_dir = d.get("tfds_dir") or os.path.join(workdir, "tfds")
    # Build the array_record files once: process 0 first, the others wait.
    if jax.process_index() == 0:
      zeshel.prepare_zeshel(d.zeshel_dir, tfds_dir, skip_bad=skip)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("zeshel_prepared")
    splits = {s: zeshel.load_zeshel(d.zeshel_dir, tfds_dir, s, skip_bad=skip)
              for s in ("train", "val", "test")}
    entities = Records.concat([splits[s][0] for s in ("train", "val", "test")])
    return LinkingData(entities=entities, train=splits["train"][1],
                       evals={"val": splits["val"][1], "test": splits["test"][1]})
  raise ValueError(f"Unknown data.kind {d.kind!r}: synthetic, jsonl or zeshel.")
