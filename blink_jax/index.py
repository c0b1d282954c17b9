"""The entity index: `search(queries, k) -> (scores, entity ids)` over two back ends.

* "exact" (exact_search.py): the matrix sharded over devices and processes,
  chunked matmul + top-k in JAX; float32, bfloat16 or int8 storage. Supports
  per-world search (Zeshel's pools). The default up to a few million rows.
* "scann" (scann_search.py): tree + asymmetric hashing + exact re-scoring in
  float32, bfloat16 or int8, calibrated to a target recall@k.
"auto" picks exact below `SCANN_FROM` rows, ScaNN above.

Rows are named by integer entity labels. For a catalogue whose ids are not all
integers (see `data/entity_ids.py`) the index also keeps each entity's id as
given (`key_of`); every index keeps titles and optional urls (`title_of`,
`url_of`), so results name entities as the catalogue does.

The knowledge base changes without a rebuild: `add` appends (or replaces, for
an id already present) and `delete` drops entities; both are searchable at
once. Saved indexes are a directory with a manifest (format, back end and
its parameters, storage, count, dimension, the model step and fingerprint
that made the vectors, and the size and SHA-256 of every file); `load`
refuses an index whose files do not match it, or that was built by another
model than the one expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from blink_jax import exact_search
from blink_jax import scann_search
from blink_jax import sharding
from blink_jax import storage

FORMAT = 1
MANIFEST = "manifest.json"
SAVING = ".saving"  # A gs:// index being uploaded (see _publish).
BACKENDS = ("auto", "exact", "scann")
SCANN_FROM = 2_000_000  # "auto": ScaNN from this many rows.
EXACT_HEADROOM = 0.25   # Spare device rows for entities added later.


class IndexLoadError(ValueError):
  """An index directory that cannot be used: corrupt, truncated or mismatched."""


def model_id(step: int, fingerprint: Any) -> dict:
  """What identifies the model behind an index's vectors."""
  digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
  return {"step": int(step), "fingerprint": digest[:16]}


class Index:
  """Entity vectors with their ids, titles and worlds, behind one search call."""

  def __init__(self, *, ids: np.ndarray, titles: list[str], worlds: np.ndarray,
               backend: str, storage: str, exact: exact_search.ExactSearch | None,
               scann: scann_search.ScannSearch | None, model: dict | None, dim: int,
               keys: list | None = None, urls: list | None = None):
    self.ids = np.asarray(ids, np.int64)       # Per row; -1 for a deleted row.
    self.titles = titles
    # Per row, or None: the labels are the ids (integer catalogues) / no entity has a url.
    self.keys, self.urls = keys, urls
    self.worlds = np.asarray(worlds, np.int32)  # Codes into world_names.
    self.backend, self.storage, self.model, self.dim = backend, storage, model, dim
    # The searchable copy lives only in the back end (device arrays for exact,
    # ScaNN's own data): no second copy on the host.
    self._exact, self._scann = exact, scann
    self.world_names: list = []
    self._by_id = None  # (live rows sorted by id, their ids), for rows_of.

  # ------------------------------------------------------------------ build
  @classmethod
  def build(cls, embeddings: np.ndarray | sharding.ShardedRows, ids: Sequence[int],
            titles: Sequence[str] | None,
            worlds: Sequence[str | None] | None = None, *, backend: str = "auto",
            storage: str = "float32", mesh: Mesh | None = None, k: int = 64,
            target_recall: float = 0.95, scann: dict | None = None,
            sample_queries: np.ndarray | None = None, model: dict | None = None,
            seed: int = 0, keys: Sequence | None = None,
            urls: Sequence[str | None] | None = None) -> "Index":
    """An index of `embeddings` [N, d] (row i is entity ids[i]; titles optional).

    `keys`: the catalogue's ids as given, when they are not `ids` (string ids);
    `urls`: each entity's url or None.

    `embeddings` may be row-sharded (`encode.embed_catalogue`): exact search
    then quantizes them where they lie, without spare rows (`add` re-lays),
    taking a float32 array over; ScaNN gathers them to the host.
    """
    on_devices = embeddings if isinstance(embeddings, sharding.ShardedRows) else None
    if on_devices is None:
      embeddings = np.asarray(embeddings, np.float32)
    n, dim = (embeddings.shape if on_devices is None
              else (on_devices.count, on_devices.array.shape[1]))
    ids = np.asarray(ids, np.int64)
    titles = [""] * n if titles is None else titles
    if len(ids) != n or len(titles) != n:
      raise ValueError(f"{n} vectors, {len(ids)} ids and {len(titles)} titles.")
    if len(np.unique(ids)) != n or (n and ids.min() < 0):
      raise ValueError("Entity ids must be distinct and >= 0.")
    keys, urls = _entity_columns(n, keys, urls)
    if backend not in BACKENDS:
      raise ValueError(f"Unknown index backend {backend!r}; one of {BACKENDS}.")
    if storage not in exact_search.STORAGES:
      raise ValueError(f"Unknown index storage {storage!r}; one of "
                       f"{exact_search.STORAGES}.")
    if backend == "auto":
      backend = "scann" if n >= SCANN_FROM else "exact"
    if on_devices is not None and backend != "exact":
      embeddings = on_devices.to_host()
    worlds = [None] * n if worlds is None else list(worlds)
    names = sorted({w for w in worlds}, key=lambda w: (w is not None, w or ""))
    code = {w: i for i, w in enumerate(names)}
    index = cls(ids=ids, titles=list(titles), worlds=[code[w] for w in worlds],
                backend=backend, storage=storage, exact=None, scann=None,
                model=model, dim=dim, keys=keys, urls=urls)
    index.world_names = names
    if backend == "exact" and on_devices is not None:  # Every row is live: group = world.
      index._exact = exact_search.ExactSearch(dim, storage, mesh or on_devices.array.sharding.mesh)
      index._exact.load_rows(on_devices, index.worlds)
    elif backend == "exact":
      values, scales = exact_search.quantize(embeddings, storage)
      index._place(values, scales, mesh)
    else:
      params = scann_search.ScannParams.derive(n, k, scann)
      index._scann = scann_search.ScannSearch.build(embeddings, np.arange(n), k, params,
                                                     storage)
      if sample_queries is None:
        sample_queries = _sample_queries(embeddings, seed)
      exact = _exact_top_k(embeddings, sample_queries, k)
      aim = min(1.0, target_recall + scann_search.CALIBRATION_MARGIN)
      reached = index._scann.calibrate(sample_queries, exact, k, aim)
      index.calibration = {"target": target_recall, "aimed": aim, "recall": reached,
                           "k": k, "queries": len(sample_queries)}
    return index

  def _place(self, values: np.ndarray, scales: np.ndarray, mesh: Mesh | None) -> None:
    """Puts stored rows on the devices, with spare rows for later additions."""
    groups = np.where(self.ids >= 0, self.worlds, exact_search.FREE).astype(np.int32)
    self._exact = exact_search.ExactSearch(self.dim, self.storage, mesh)
    self._exact.load(values, scales, groups, headroom=EXACT_HEADROOM)

  # ----------------------------------------------------------------- search
  def __len__(self) -> int:
    return int((self.ids >= 0).sum())

  def search(self, queries: np.ndarray, k: int, worlds: Sequence[str | None] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], entity ids [Q, k]) best first; -inf / -1 past the last match.

    With `worlds`, query i sees only the entities of worlds[i] (exact only).
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"Queries must be [Q, {self.dim}], got {queries.shape}.")
    if self.backend == "exact":
      groups = None if worlds is None else self._world_codes(worlds)
      scores, rows = self._exact.search(queries, k, groups)
    else:
      if worlds is not None:
        self._world_codes(worlds)  # Unknown worlds are an error here too.
        if len(self.world_names) > 1:
          raise ValueError("A ScaNN index searches its whole catalogue; per-world "
                           "search needs backend='exact'.")
      scores, rows = self._scann.search(queries, k)
    return scores, np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)

  def _world_codes(self, worlds) -> np.ndarray:
    code = {w: i for i, w in enumerate(self.world_names)}
    unknown = {w for w in worlds if w not in code}
    if unknown:
      raise ValueError(f"Worlds not in the index: {sorted(map(str, unknown))[:5]}.")
    return np.asarray([code[w] for w in worlds], np.int32)

  def rows_of(self, ids: Sequence[int]) -> np.ndarray:
    """Index rows of live entity ids; -1 where absent."""
    if self._by_id is None:  # Sorted once per change, not per call.
      live = np.flatnonzero(self.ids >= 0)
      order = np.argsort(self.ids[live])
      self._by_id = (live[order], self.ids[live][order])
    rows, sorted_ids = self._by_id
    want = np.asarray(ids, np.int64)
    if not len(sorted_ids):
      return np.full(want.shape, -1, np.int64)
    i = np.minimum(np.searchsorted(sorted_ids, want), len(sorted_ids) - 1)
    return np.where(sorted_ids[i] == want, rows[i], -1)

  def title_of(self, ids: Sequence[int]) -> list[str | None]:
    """The title of each entity label (None where absent)."""
    rows = self.rows_of(ids)
    return [self.titles[r] if r >= 0 else None for r in np.ravel(rows)]

  def key_of(self, ids: Sequence[int]) -> list:
    """The catalogue's id, as given (int or str), of each entity label (None where absent)."""
    rows = np.ravel(self.rows_of(ids))
    if self.keys is None:
      return [int(self.ids[r]) if r >= 0 else None for r in rows]
    return [self.keys[r] if r >= 0 else None for r in rows]

  def url_of(self, ids: Sequence[int]) -> list[str | None]:
    """The url of each entity label (None where absent or when the catalogue has none)."""
    rows = np.ravel(self.rows_of(ids))
    return [self.urls[r] if r >= 0 and self.urls is not None else None for r in rows]

  def label_of(self, keys: Sequence) -> np.ndarray:
    """The label of each catalogue id (as given); -1 where no live entity has it."""
    if self.keys is None:  # The ids are the labels; a string is no id here.
      ints = [k if isinstance(k, int) and not isinstance(k, bool) else -1 for k in keys]
      rows = self.rows_of(np.asarray(ints, np.int64))
      return np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
    live = {self.keys[r]: int(self.ids[r]) for r in np.flatnonzero(self.ids >= 0)}
    return np.asarray([live.get(k, -1) if not isinstance(k, bool) else -1 for k in keys],
                      np.int64)

  def labels_for(self, keys: Sequence) -> np.ndarray:
    """Labels under which to `add` entities named by their catalogue ids.

    An indexed id keeps its label (the entity is replaced). An integer index given only
    integer ids stays one (each id is its label); otherwise a new id gets a fresh label,
    past every label in use.
    """
    keys = list(keys)
    if self.keys is None and all(isinstance(k, int) and not isinstance(k, bool)
                                 for k in keys):
      return np.asarray(keys, np.int64).reshape(-1)
    labels = self.label_of(keys)
    fresh = max(int(self.ids.max()) + 1 if len(self.ids) else 0, 0)
    assigned: dict = {}
    for i, k in enumerate(keys):
      if labels[i] < 0:
        if k not in assigned:
          assigned[k] = fresh
          fresh += 1
        labels[i] = assigned[k]
    return labels

  # ---------------------------------------------------------------- changes
  def add(self, embeddings: np.ndarray, ids: Sequence[int], titles: Sequence[str],
          worlds: Sequence[str | None] | None = None, *, keys: Sequence | None = None,
          urls: Sequence[str | None] | None = None) -> None:
    """Adds entities; an id already in the index is replaced. Searchable at once.

    `keys` and `urls` as for `build` (`labels_for(keys)` gives the `ids` of entities
    named by catalogue ids).
    """
    embeddings = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
    ids = np.asarray(ids, np.int64)
    if len(ids) != len(embeddings) or len(titles) != len(ids):
      raise ValueError(f"{len(embeddings)} vectors, {len(ids)} ids, {len(titles)} titles.")
    if len(np.unique(ids)) != len(ids) or (len(ids) and ids.min() < 0):
      raise ValueError("Added entity ids must be distinct and >= 0.")
    worlds = [None] * len(ids) if worlds is None else list(worlds)
    if len(worlds) != len(ids):
      raise ValueError(f"{len(ids)} ids but {len(worlds)} worlds.")
    keys, urls = _entity_columns(len(ids), keys, urls)
    # Everything is checked: from here on the index changes.
    self.delete(ids[self.rows_of(ids) >= 0])
    # A column that one side lacks is filled with what it means there (the label; None).
    if keys is not None or self.keys is not None:
      self.keys = (self.ids.tolist() if self.keys is None else self.keys) + (
          ids.tolist() if keys is None else keys)
    if urls is not None or self.urls is not None:
      self.urls = ([None] * len(self.ids) if self.urls is None else self.urls) + (
          [None] * len(ids) if urls is None else urls)
    for w in worlds:
      if w not in self.world_names:
        self.world_names.append(w)
    codes = self._world_codes(worlds)
    first = len(self.ids)
    rows = np.arange(first, first + len(ids))
    self.ids = np.concatenate([self.ids, ids])
    self._by_id = None
    self.titles.extend(titles)
    self.worlds = np.concatenate([self.worlds, codes])
    if self.backend == "exact":
      values, scales = exact_search.quantize(embeddings, self.storage)
      if rows.size and rows[-1] >= self._exact.capacity:
        # Out of spare rows: re-lay the device arrays with room to grow.
        self._exact.grow(int(len(self.ids) * (1 + EXACT_HEADROOM)))
      self._exact.update(rows, values, scales, codes)
    else:
      self._scann.upsert(rows, embeddings)

  def delete(self, ids: Sequence[int]) -> None:
    """Removes entities by id; unknown ids are an error."""
    ids = np.unique(np.asarray(ids, np.int64))
    rows = self.rows_of(ids)
    if (rows < 0).any():
      missing = np.asarray(ids)[rows < 0]
      raise KeyError(f"Entity ids not in the index: {missing[:5].tolist()}")
    if not rows.size:
      return
    if self.backend == "exact":
      self._exact.update(rows, np.zeros((len(rows), self.dim)), np.zeros(len(rows)),
                         np.full(len(rows), exact_search.FREE))
    else:
      self._scann.delete(rows)
    self.ids[rows] = -1
    self._by_id = None

  # ----------------------------------------------------------------- memory
  def memory_bytes(self) -> int | None:
    """Bytes of the searchable copy (device arrays, or ScaNN's data)."""
    if self.backend == "exact":
      return self._exact.memory_bytes()
    return None  # ScaNN does not report it; bench/retrieval.py measures RSS.

  # -------------------------------------------------------------- save/load
  def save(self, directory: str) -> None:
    """Writes the index atomically: a complete directory, or nothing new.

    Every process must call it (the exact back end's rows are gathered with
    collectives); process 0 writes. An existing directory is replaced only if
    it is an index (has a manifest), so a mistyped path cannot wipe a workdir.
    A gs:// index is written to a local directory first and then uploaded,
    manifest last (`_publish`): there a reader may find no index while it is
    written, but never an index whose files do not match its manifest.
    """
    directory = storage.abspath(directory)
    marks = (MANIFEST, SAVING) if storage.is_remote(directory) else (MANIFEST,)
    if storage.isdir(directory) and storage.listdir(directory) and not any(
        storage.exists(os.path.join(directory, n)) for n in marks):
      raise IndexLoadError(f"{directory} exists and is not an index; not replacing it.")
    if not storage.is_remote(directory):
      self._save_local(directory)
    else:
      with tempfile.TemporaryDirectory(prefix="blink_jax.index.") as tmp:
        staged = os.path.join(tmp, "index")
        self._save_local(staged)
        if jax.process_index() == 0:
          _publish(staged, directory)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"index_saved:{directory}")

  def _save_local(self, directory: str) -> None:
    """`save` to a local directory: written beside it, then renamed into place."""
    writer = jax.process_index() == 0
    parent = os.path.dirname(directory)
    tmp = None
    try:
      if writer:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
      live = np.flatnonzero(self.ids >= 0)
      params: dict = {}
      if self.backend == "exact":
        self._write_rows(live, tmp)
      elif writer:
        # ScaNN points are renumbered so that they are the compacted rows.
        self._scann.save(os.path.join(tmp, "scann"))
        np.save(os.path.join(tmp, "scann", "positions.npy"),
                np.searchsorted(live, self._scann.positions))
        params = dataclasses.asdict(self._scann.params)
      if writer:
        self._write_rest(directory, tmp, live, params)
    except BaseException:
      if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
      raise

  def _write_rows(self, live: np.ndarray, tmp: str | None) -> None:
    """Streams the live stored rows into tmp/vectors.npy (process 0 writes)."""
    dtype = np.uint16 if self.storage == "bfloat16" else exact_search._dtype(self.storage)  # pylint: disable=protected-access
    vectors = scales = None
    if tmp:  # .npy has no bfloat16: its bits are stored as uint16; the manifest says so.
      vectors = np.lib.format.open_memmap(os.path.join(tmp, "vectors.npy"), mode="w+",
                                          dtype=dtype, shape=(len(live), self.dim))
      scales = np.empty(len(live), np.float32)
    for start, v, sc in self._exact.iter_rows(live):
      if tmp:
        vectors[start:start + len(v)] = v.view(dtype)
        scales[start:start + len(v)] = sc
    if tmp:
      vectors.flush()
      del vectors
      np.save(os.path.join(tmp, "scales.npy"), scales)

  def _write_rest(self, directory: str, tmp: str, live: np.ndarray, params: dict) -> None:
    """Entities, manifest (with every file's size and hash), then the rename."""
    with open(os.path.join(tmp, "entities.jsonl"), "w", encoding="utf-8") as f:
      for r in live:
        line = {"id": int(self.ids[r]), "title": self.titles[r],
                "world": self.world_names[self.worlds[r]]}
        # Only when there are any: an integer catalogue's index is as it always was.
        if self.keys is not None:
          line["key"] = self.keys[r]
        if self.urls is not None and self.urls[r] is not None:
          line["url"] = self.urls[r]
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
    files = {}
    for root, _, names in os.walk(tmp):
      for name in sorted(names):
        path = os.path.join(root, name)
        files[os.path.relpath(path, tmp)] = {"bytes": os.path.getsize(path),
                                             "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "backend": self.backend, "storage": self.storage,
                "dim": self.dim, "count": int(len(live)), "params": params,
                "model": self.model, "files": files,
                "calibration": getattr(self, "calibration", None)}
    with open(os.path.join(tmp, MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    parent = os.path.dirname(directory)
    old = None
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old.", dir=parent)
      os.replace(directory, os.path.join(old, "index"))
    os.replace(tmp, directory)
    if old:
      shutil.rmtree(old)

  @classmethod
  def load(cls, directory: str, *, expect_model: dict | None = None,
           mesh: Mesh | None = None, verify: bool = True) -> "Index":
    """Reads a saved index; refuses corrupt, truncated or mismatched ones.

    A gs:// index is downloaded to a temporary directory and read from there (the exact
    back end memory-maps its vectors); errors name the gs:// path.
    """
    if not storage.is_remote(directory):
      return cls._load_local(directory, expect_model=expect_model, mesh=mesh, verify=verify)
    if not storage.exists(os.path.join(directory, MANIFEST)):
      raise IndexLoadError(f"{directory} is not an index: no {MANIFEST}.")
    with storage.local_copy(directory) as local:
      try:
        return cls._load_local(local, expect_model=expect_model, mesh=mesh, verify=verify)
      except IndexLoadError as e:
        raise IndexLoadError(str(e).replace(local, directory.rstrip("/"))) from None

  @classmethod
  def _load_local(cls, directory: str, *, expect_model: dict | None,
                  mesh: Mesh | None, verify: bool) -> "Index":
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path) as f:
        m = json.load(f)
    except FileNotFoundError:
      raise IndexLoadError(f"{directory} is not an index: no {MANIFEST}.") from None
    except json.JSONDecodeError as e:
      raise IndexLoadError(f"{path} is corrupt: {e}.") from None
    if m.get("format") != FORMAT:
      raise IndexLoadError(f"{path}: index format {m.get('format')}, expected {FORMAT}.")
    if expect_model is not None and m.get("model") != expect_model:
      raise IndexLoadError(
          f"{directory} was built from model {m.get('model')}, but the model in use is "
          f"{expect_model}. Rebuild it: --config.mode=index.")
    for name, want in m["files"].items():
      fpath = os.path.join(directory, name)
      size = os.path.getsize(fpath) if os.path.exists(fpath) else None
      if size != want["bytes"]:
        raise IndexLoadError(f"{fpath}: {size} bytes, the manifest says {want['bytes']} "
                         "(missing or truncated).")
      if verify and _sha256(fpath) != want["sha256"]:
        raise IndexLoadError(f"{fpath}: checksum does not match the manifest (corrupt).")
    ids, titles, worlds, keys, urls = [], [], [], [], []
    with open(os.path.join(directory, "entities.jsonl"), encoding="utf-8") as f:
      for line in f:
        e = json.loads(line)
        ids.append(e["id"]), titles.append(e["title"]), worlds.append(e["world"])
        keys.append(e.get("key")), urls.append(e.get("url"))
    keys = keys if any(k is not None for k in keys) else None
    urls = urls if any(u is not None for u in urls) else None
    if len(ids) != m["count"]:
      raise IndexLoadError(f"{directory}: {len(ids)} entities, the manifest says {m['count']}.")
    names = sorted(set(worlds), key=lambda w: (w is not None, w or ""))
    code = {w: i for i, w in enumerate(names)}
    index = cls(ids=ids, titles=titles, worlds=[code[w] for w in worlds],
                backend=m["backend"], storage=m["storage"], exact=None, scann=None,
                model=m.get("model"), dim=m["dim"], keys=keys, urls=urls)
    index.world_names = names
    index.calibration = m.get("calibration")
    if m["backend"] == "exact":
      values = np.load(os.path.join(directory, "vectors.npy"), mmap_mode="r")
      if m["storage"] == "bfloat16":
        values = values.view(ml_dtypes.bfloat16)
      # Memory-mapped: each process reads only its own devices' rows.
      index._place(values, np.load(os.path.join(directory, "scales.npy")), mesh)
    else:
      params = scann_search.ScannParams(**m["params"])
      index._scann = scann_search.ScannSearch.load(os.path.join(directory, "scann"),
                                                    params, m["storage"])
    return index


def _publish(staged: str, directory: str) -> None:
  """Uploads the index in local directory `staged` to gs:// `directory`, replacing it.

  GCS has no directory rename. So: a marker says an index is being written (a later save
  may replace a half-written one; `load` finds no manifest and refuses it), the old
  manifest and files go, the new files are uploaded, the manifest last, then the marker.
  """
  marker = os.path.join(directory, SAVING)
  storage.atomic_write(marker, b"")
  storage.remove(os.path.join(directory, MANIFEST))  # First: never paired with new files.
  for name in storage.listdir(directory):
    if name != SAVING:
      target = os.path.join(directory, name)
      if storage.isdir(target):
        storage.rmtree(target)
      else:
        storage.remove(target)
  for root, _, names in os.walk(staged):
    for name in names:
      if name != MANIFEST:
        local = os.path.join(root, name)
        storage.upload_file(local, os.path.join(directory, os.path.relpath(local, staged)))
  storage.upload_file(os.path.join(staged, MANIFEST), os.path.join(directory, MANIFEST))
  storage.remove(marker)


def _entity_columns(n: int, keys: Sequence | None, urls: Sequence | None
                    ) -> tuple[list | None, list | None]:
  """Checked key and url columns of n entities; None for a column with nothing in it."""
  if keys is not None:
    keys = list(keys)
    if len(keys) != n or len(set(keys)) != n:
      raise ValueError(f"{n} entities need {n} distinct keys, got {len(keys)} "
                       f"({len(set(keys))} distinct).")
  if urls is not None:
    urls = list(urls)
    if len(urls) != n:
      raise ValueError(f"{n} entities but {len(urls)} urls.")
    if all(u is None for u in urls):
      urls = None
  return keys, urls


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _sample_queries(embeddings: np.ndarray, seed: int, n: int = 1000) -> np.ndarray:
  """Held-out-like queries: catalogue vectors moved by noise of their own scale."""
  rng = np.random.default_rng(seed)
  base = embeddings[rng.choice(len(embeddings), min(n, len(embeddings)), replace=False)]
  noise = rng.normal(size=base.shape).astype(np.float32)
  noise *= np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
  return base + noise


def _exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int,
                 chunk: int = 65536) -> np.ndarray:
  """Exact top-k rows by dot product, in numpy, for calibration."""
  best_s = np.full((len(queries), 0), -np.inf, np.float32)
  best_r = np.zeros((len(queries), 0), np.int64)
  for start in range(0, len(embeddings), chunk):
    s = queries @ embeddings[start:start + chunk].T
    kk = min(k, s.shape[1])
    top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    best_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
    best_r = np.concatenate([best_r, top + start], 1)
    keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
    best_s, best_r = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_r, keep, 1)
  return best_r
