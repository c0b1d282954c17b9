"""Loads a run's data, whatever its kind, into one `LinkingData`.

`config.data.kind` selects:
  * "synthetic": the generated Zeshel-style worlds (written to
    `data.dir`, default WORKDIR/data); evaluation on the unseen test worlds.
  * "jsonl": BLINK-format files: `data.entities` (catalogue), `data.train`
    (comma-separated mention files, concatenated; may be empty for evaluation
    only) and `data.eval` (comma-separated mention files, each evaluated
    separately, named after the file).
  * "wikipedia": real English text: the wikiel dev sets in `data.wikiel_dir`
    and weakly annotated Wikipedia summaries (see `wikipedia.py`), one dev
    set (`data.fold`) held out.
  * "zeshel": the Zeshel release in `data.zeshel_dir` (see `zeshel.py`),
    train on the train worlds, evaluate on val and test worlds; the linker's
    documents are each split's context documents with their mentions.
`data.skip_bad` skips (and counts) bad records instead of failing. Training
mentions whose gold is NIL (label_id -1) teach no entity: they are dropped
and counted, as BLINK does; evaluation keeps them (recall counts only
in-catalogue golds, end-to-end scoring counts NIL spans).

Every set is a `records.Records`: labels and worlds in memory, the records
themselves read by row, so each process reads only the rows it tokenizes.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from blink_jax import storage
from blink_jax import workdir as workdir_lib
from blink_jax.data import jsonl
from blink_jax.data import synthetic
from blink_jax.data import wikipedia
from blink_jax.data.entity_ids import EntityIds
from blink_jax.data.jsonl import Document, Entity, Mention
from blink_jax.data.records import Records


@dataclasses.dataclass
class LinkingData:
  """A catalogue, training mentions and named evaluation sets.

  Documents (whole texts with annotated spans) train and evaluate the
  end-to-end linker; they are small next to the catalogue and held in memory.
  """

  entities: Records[Entity]
  train: Records[Mention]
  evals: dict[str, Records[Mention]]
  train_documents: list[Document] = dataclasses.field(default_factory=list)
  eval_documents: dict[str, list[Document]] = dataclasses.field(default_factory=dict)
  # Documents that calibrate the linker's thresholds, never trained on by any
  # stage. Empty: the linker holds out `linker.heldout_fraction` of
  # train_documents instead.
  calibration_documents: list[Document] = dataclasses.field(default_factory=list)
  # A digest of the training mentions' text, from a source that builds them in
  # memory (wikipedia): its options change text without changing labels, and
  # stage fingerprints must see that. "" where the text lives in files.
  train_text: str = ""

  def train_identity(self) -> dict[str, str]:
    """What a training stage's fingerprint holds of its training mentions: their
    labels, and their text where the source digested it."""
    return {"data.train": workdir_lib.fingerprint_of(self.train.labels),
            **({"data.train_text": self.train_text} if self.train_text else {})}

  def entities_for(self, mentions: Records[Mention]) -> Records[Entity]:
    """The catalogue restricted to the worlds of `mentions` (all if no worlds)."""
    return self.entities.in_worlds(set(mentions.worlds))


def synthetic_paths(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Writes the synthetic worlds (unless already there); returns their paths."""
  data_dir = config.data.get("dir") or os.path.join(workdir, "data")
  cfg = synthetic.SyntheticConfig(**config.data.synthetic)
  # Process 0 writes first and the others wait: a process that wrote beside it could
  # replace a file under a reader ("changed after it was opened"). After the barrier the
  # others find process 0's files on shared storage and write nothing; a host with a disk
  # of its own writes the same (deterministic) files there.
  if jax.process_index() == 0:
    paths = synthetic.ensure_written(cfg, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("synthetic_written")
  if jax.process_index() != 0:
    paths = synthetic.ensure_written(cfg, data_dir)
  return {k: os.fspath(v) for k, v in paths.items()}


def _paths(spec: str) -> list[str]:
  """A comma-separated list of paths."""
  return [p for p in (x.strip() for x in spec.split(",")) if p]


def _eval_name(path: str) -> str:
  name = os.path.basename(path)
  for suffix in (".jsonl", ".mentions", ".docs"):
    name = name[:-len(suffix)] if name.endswith(suffix) else name
  return name


def _check_titles(entities: Records[Entity], docs: list[Document]) -> None:
  """Fails when the documents' entity ids do not name the same entities in the catalogue.

  A built Zeshel catalogue is reused whatever zeshel_dir or skip_bad say now, while the
  documents are read from zeshel_dir now; a different release or skip_bad would shift ids.
  Reads one catalogue record per distinct gold entity.
  """
  titles = {s.label_id: s.label_title for doc in docs for s in doc.spans}
  ids = sorted(titles)
  pos = entities.positions_of(ids)
  found = entities.take(pos[pos >= 0])
  got = dict(zip(np.asarray(ids)[pos >= 0].tolist(), (e.title for e in found)))
  bad = [i for i in ids if got.get(i) != titles[i]]
  if bad:
    i = bad[0]
    raise jsonl.DataError(
        f"{len(bad)} entity id(s) of the Zeshel documents disagree with the built catalogue "
        f"(e.g. id {i}: {titles[i]!r} in the documents, {got.get(i)!r} in the catalogue); "
        "delete the tfds build (data.tfds_dir/zeshel) to rebuild it from data.zeshel_dir.",
        "catalogue_mismatch")


def check(config: ml_collections.ConfigDict) -> None:
  """Fails, before any work starts, when the data a config names is missing.

  Before, not after, the encoder is built: a config whose encoder comes from the hub
  (Zeshel's bert-base-uncased) would otherwise fail first on the download, offline, with
  an error that says nothing about the data.
  """
  d = config.data
  if d.kind == "jsonl":
    _check_jsonl_paths(d)
  if d.kind == "zeshel":
    if not d.get("zeshel_dir"):
      raise ValueError("data.kind='zeshel' needs --config.data.zeshel_dir=PATH "
                       "(the unpacked Zeshel release).")
    from blink_jax.data import zeshel  # pylint: disable=g-import-not-at-top
    zeshel.check_raw_dir(d.zeshel_dir)
  if d.kind == "wikipedia":
    wikipedia.check_wikiel_dir(d.wikiel_dir)
    wikipedia.summaries_path(d.get("summaries") or None)
    if d.fold and d.fold not in wikipedia.DEV_SETS:
      raise ValueError(f"config.data.fold={d.fold!r}: one of {', '.join(wikipedia.DEV_SETS)} "
                       "(held out), or empty (train on all).")
    wikipedia.check_common_nouns(d.get("weak_common_nouns", "all"))


def _check_jsonl_paths(d: ml_collections.ConfigDict) -> None:
  if not d.get("entities"):
    raise ValueError("data.kind='jsonl' needs --config.data.entities=PATH.")
  named = [("entities", d.entities)] + [
      (key, p) for key in ("train", "eval", "train_documents", "eval_documents")
      for p in _paths(d.get(key) or "")]
  for key, path in named:
    storage.check_reachable(path, what=f"config.data.{key}")
    if not storage.isfile(path):
      raise FileNotFoundError(f"config.data.{key}: {path}: no such file")


def _without_nil(train: Records[Mention]) -> Records[Mention]:
  nil = int((train.labels < 0).sum())
  if nil:
    logging.warning("Dropped %d of %d training mentions whose gold is NIL (label_id -1): "
                    "they name no entity to learn.", nil, len(train))
    return train.subset(np.flatnonzero(train.labels >= 0))
  return train


def load(config: ml_collections.ConfigDict, workdir: str, *,
         documents: bool = False) -> LinkingData:
  """The data of `config.data`, validated against the catalogue.

  `documents=True` also reads the linker's documents (the other stages do
  not need them, and for Zeshel they cost a pass over the raw release).
  """
  data = _load(config, workdir, documents=documents)
  data.train = _without_nil(data.train)
  return data


def _load(config: ml_collections.ConfigDict, workdir: str, *,
          documents: bool) -> LinkingData:
  d = config.data
  skip = bool(d.get("skip_bad", False))
  if d.kind == "synthetic":
    paths = synthetic_paths(config, workdir)
    entities = jsonl.open_entities(paths["entities"], skip_bad=skip)
    ids = EntityIds.of(entities)
    return LinkingData(
        entities=entities,
        train=jsonl.open_mentions(paths["train_mentions"], catalogue_ids=ids, skip_bad=skip),
        evals={"test": jsonl.open_mentions(paths["test_mentions"], catalogue_ids=ids,
                                           skip_bad=skip)},
        train_documents=(jsonl.read_documents(paths["train_documents"], catalogue_ids=ids,
                                              skip_bad=skip) if documents else []),
        eval_documents=({"test": jsonl.read_documents(paths["test_documents"],
                                                      catalogue_ids=ids, skip_bad=skip)}
                        if documents else {}))
  if d.kind == "jsonl":
    if not d.get("entities"):
      raise ValueError("data.kind='jsonl' needs --config.data.entities=PATH.")
    entities = jsonl.open_entities(d.entities, skip_bad=skip)
    # Mentions and documents name entities by the catalogue's ids (integers or strings).
    ids = EntityIds.of(entities)
    train = Records.concat([jsonl.open_mentions(p, catalogue_ids=ids, skip_bad=skip)
                            for p in _paths(d.get("train") or "")] or [Records.of([])])
    evals = {_eval_name(p): jsonl.open_mentions(p, catalogue_ids=ids, skip_bad=skip)
             for p in _paths(d.get("eval", ""))}
    docs = lambda p: jsonl.read_documents(p, catalogue_ids=ids, skip_bad=skip)
    return LinkingData(
        entities=entities, train=train, evals=evals,
        train_documents=(docs(d.train_documents)
                         if documents and d.get("train_documents") else []),
        eval_documents=({_eval_name(p): docs(p) for p in _paths(d.get("eval_documents", ""))}
                        if documents else {}))
  if d.kind == "wikipedia":
    check(config)
    return LinkingData(**wikipedia.load(d, documents=documents))
  if d.kind == "zeshel":
    from blink_jax.data import zeshel  # pylint: disable=g-import-not-at-top
    check(config)
    tfds_dir = d.get("tfds_dir") or os.path.join(workdir, "tfds")
    # Build the array_record files once: process 0 first, the others wait.
    if jax.process_index() == 0:
      zeshel.prepare_zeshel(d.zeshel_dir, tfds_dir, skip_bad=skip)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("zeshel_prepared")
    splits = {s: zeshel.load_zeshel(d.zeshel_dir, tfds_dir, s, skip_bad=skip)
              for s in ("train", "val", "test")}
    entities = Records.concat([splits[s][0] for s in ("train", "val", "test")])
    # Documents for the end-to-end linker, read from the raw release on every process: a pass
    # over all documents files to rebuild the entity ids, then the context documents of each
    # split's mentions. At most one per mention (Zeshel: ~49k train, 10k val, 10k test
    # mentions, fewer documents), a few KB of text each, so holding them in memory is fine.
    out = LinkingData(entities=entities, train=splits["train"][1],
                      evals={"val": splits["val"][1], "test": splits["test"][1]})
    if documents:
      docs = zeshel.read_documents(d.zeshel_dir, skip_bad=skip)
      _check_titles(entities, [doc for split in docs.values() for doc in split])
      out.train_documents = docs["train"]
      out.eval_documents = {"val": docs["val"], "test": docs["test"]}
    return out
  raise ValueError(f"Unknown data.kind {d.kind!r}: synthetic, jsonl, wikipedia or zeshel.")
