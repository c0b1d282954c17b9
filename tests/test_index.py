"""The entity index against exact references: brute force, one device, one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from blink_jax import index as index_lib
from blink_jax import scann_search
from blink_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def catalogue(n, d=32, clusters=50, seed=0):
  """Clustered, anisotropic vectors: what trained entity embeddings look like."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(clusters, d)) * 2
  scale = rng.uniform(0.2, 1.5, size=d)  # Some directions matter more than others.
  x = centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d)) * scale
  return x.astype(np.float32)


def queries(emb, n, seed):
  rng = np.random.default_rng(seed)
  base = emb[rng.integers(len(emb), size=n)]
  return (base + rng.normal(size=base.shape) * 0.8).astype(np.float32)


def brute_force(emb, q, k):
  s = q @ emb.T
  top = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, top, 1), top


def one_device_mesh():
  return sharding.make_mesh(devices=[jax.devices()[0]])


def test_sharded_exact_equals_one_device_and_brute_force():
  emb = catalogue(3001)
  ids = np.arange(3001) * 7 + 3  # Ids are not rows.
  q = queries(emb, 300, seed=1)
  eight = index_lib.Index.build(emb, ids, [f"e{i}" for i in ids], backend="exact")
  assert eight._exact.mesh.size == 8
  one = index_lib.Index.build(emb, ids, [f"e{i}" for i in ids], backend="exact",
                              mesh=one_device_mesh())
  s8, i8 = eight.search(q, 20)
  s1, i1 = one.search(q, 20)
  want_s, want_rows = brute_force(emb, q, 20)
  np.testing.assert_array_equal(i8, i1)
  np.testing.assert_array_equal(i8, ids[want_rows])
  np.testing.assert_allclose(s8, want_s, rtol=1e-5, atol=1e-4)


def test_the_index_keeps_its_own_copy_of_the_vectors():
  emb = catalogue(100, seed=19)
  idx = index_lib.Index.build(emb, np.arange(100), [""] * 100, backend="exact")
  q = emb[:3].copy()
  before = idx.search(q, 5)
  emb[:] = 0  # The caller reuses its buffer...
  idx.add(catalogue(200, seed=20) * 0.01, np.arange(1000, 1200), [""] * 200)  # ...and it grows.
  np.testing.assert_array_equal(idx.search(q, 5)[1], before[1])


def test_per_world_search_sees_only_its_world():
  emb = catalogue(400, seed=2)
  worlds = ["a" if i % 3 else "b" for i in range(400)]
  idx = index_lib.Index.build(emb, np.arange(400), [""] * 400, worlds, backend="exact")
  q = queries(emb, 50, seed=3)
  qw = ["a"] * 25 + ["b"] * 25
  _, got = idx.search(q, 10, worlds=qw)
  for i, w in enumerate(qw):
    rows = np.flatnonzero(np.asarray(worlds) == w)
    _, top = brute_force(emb[rows], q[i:i + 1], 10)
    np.testing.assert_array_equal(got[i], rows[top[0]])
  with pytest.raises(ValueError, match="Worlds not in the index"):
    idx.search(q[:1], 5, worlds=["c"])


def test_fewer_matches_than_k_are_padded():
  emb = catalogue(5, seed=4)
  idx = index_lib.Index.build(emb, np.arange(5), [""] * 5, backend="exact")
  s, i = idx.search(emb[:2], 8)
  assert (i[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
  assert sorted(i[0, :5].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("storage,ratio,min_recall", [("bfloat16", 0.5, 0.97),
                                                      ("int8", 0.25, 0.9)])
def test_compact_storage_keeps_recall_and_saves_memory(storage, ratio, min_recall):
  emb = catalogue(4000, seed=5)
  q = queries(emb, 200, seed=6)
  full = index_lib.Index.build(emb, np.arange(4000), [""] * 4000, backend="exact")
  small = index_lib.Index.build(emb, np.arange(4000), [""] * 4000, backend="exact",
                                storage=storage)
  _, want = full.search(q, 64)
  _, got = small.search(q, 64)
  assert scann_search.recall(got, want) >= min_recall
  vec_bytes = lambda ix: ix._exact.values.size * ix._exact.values.dtype.itemsize
  assert vec_bytes(small) == vec_bytes(full) * ratio


def test_scann_reaches_the_target_recall_on_held_out_queries():
  emb = catalogue(30000, seed=7)
  target = 0.9
  idx = index_lib.Index.build(emb, np.arange(30000), [""] * 30000, backend="scann",
                              k=32, target_recall=target, storage="int8",
                              sample_queries=queries(emb, 300, seed=8))
  assert not idx._scann.params.brute_force and idx._scann.params.num_leaves == 173
  assert idx.calibration["recall"] >= target
  q = queries(emb, 300, seed=9)  # Not the calibration queries.
  _, got = idx.search(q, 32)
  _, want = brute_force(emb, q, 32)
  assert scann_search.recall(got, want) >= target


@pytest.mark.parametrize("backend", ["exact", "scann"])
def test_added_entities_are_found_at_once_and_deleted_ones_never(backend):
  emb = catalogue(2000, seed=10)
  idx = index_lib.Index.build(emb, np.arange(2000), [f"e{i}" for i in range(2000)],
                              backend=backend)
  q = queries(emb, 5, seed=11)
  new = q * 10  # Each new entity is the best match of its query by far.
  idx.add(new, [5000, 5001, 5002, 5003, 5004], [f"new{i}" for i in range(5)])
  _, got = idx.search(q, 3)
  assert got[:, 0].tolist() == [5000, 5001, 5002, 5003, 5004]
  assert idx.title_of([5003]) == ["new3"] and len(idx) == 2005
  idx.delete([5001, 5003])
  _, got = idx.search(q, 50)
  assert not np.isin(got, [5001, 5003]).any() and got[0, 0] == 5000
  # Replacing an entity: same id, new vector and title.
  idx.add(-new[:1], [5000], ["replaced"])
  _, got = idx.search(q[:1], 50)
  assert 5000 not in got[0] and idx.title_of([5000]) == ["replaced"]
  with pytest.raises(KeyError, match="not in the index"):
    idx.delete([123456])


@pytest.mark.xfail(strict=False, reason=(
    "Known defect (README, The entity index): after save + load, further adds and deletes "
    "sometimes give one query wrong neighbours (recall .973, about one run in four; never "
    "without the reload). Kept running so that a fix shows as XPASS every time."))
def test_scann_tree_path_with_interleaved_changes_and_reload(tmp_path):
  # A tree (not brute force) on a small catalogue, through the overrides.
  emb = catalogue(3000, seed=21)
  idx = index_lib.Index.build(emb, np.arange(3000), [""] * 3000, backend="scann",
                              scann={"brute_force": False, "num_leaves": 30,
                                     "leaves_to_search": 30, "reorder": 300})
  assert not idx._scann.params.brute_force and idx._scann.params.num_leaves == 30
  live = dict(enumerate(emb))
  rng = np.random.default_rng(22)
  for step in range(3):
    gone = rng.choice(sorted(live), 40, replace=False)
    idx.delete(gone)
    for g in gone:
      del live[g]
    new_ids = np.arange(10000 + 100 * step, 10000 + 100 * step + 30)
    new = catalogue(30, seed=30 + step)
    idx.add(new, new_ids, [""] * 30)
    live.update(zip(new_ids, new))
    if step == 1:
      idx.save(tmp_path / "ix")
      idx = index_lib.Index.load(tmp_path / "ix")
  ids = np.array(sorted(live))
  mat = np.stack([live[i] for i in ids])
  q = queries(mat, 30, seed=23)
  # Every leaf searched and the top 300 by AH re-scored exactly. Run after
  # this file's other tests, ScaNN's parallel batched search gave recall 0.973
  # here whatever the budget; the index now searches with search_batched.
  _, got = idx.search(q, 10)
  _, want = brute_force(mat, q, 10)
  assert scann_search.recall(got, ids[want]) >= 0.98
  assert len(idx) == len(live)


def test_scann_short_results_are_padded_not_repeated():
  emb = catalogue(600, seed=24)
  idx = index_lib.Index.build(emb, np.arange(600), [""] * 600, backend="scann",
                              scann={"brute_force": False, "num_leaves": 60,
                                     "leaves_to_search": 1, "reorder": 0})
  scores, got = idx.search(queries(emb, 5, seed=25), 64)
  for row, sc in zip(got, scores):
    real = row[row >= 0]
    assert len(set(real.tolist())) == len(real)  # No entity twice.
    assert np.isneginf(sc[row < 0]).all() and np.isfinite(sc[row >= 0]).all()


def test_scann_params_overrides():
  p = scann_search.ScannParams.derive(1000, 64, {"reorder": 256})
  assert p.brute_force and p.reorder == 256
  p = scann_search.ScannParams.derive(1_000_000, 64, {"num_leaves": 0, "reorder": 0})
  assert p.num_leaves == 1000 and p.reorder == 256
  with pytest.raises(ValueError, match="Unknown ScaNN parameters"):
    scann_search.ScannParams.derive(10, 1, {"leaves": 3})


def test_bad_changes_leave_the_index_as_it_was():
  emb = catalogue(50, seed=26)
  idx = index_lib.Index.build(emb, np.arange(50), [f"e{i}" for i in range(50)],
                              ["a"] * 50, backend="exact")
  q = queries(emb, 4, seed=27)
  before = idx.search(q, 5)
  with pytest.raises(ValueError, match="3 ids but 2 worlds"):
    idx.add(emb[:3], [5, 100, 101], ["x"] * 3, ["a", "b"])
  idx.delete([7, 7])  # A repeated id is deleted once.
  assert len(idx) == 49 and idx.title_of([5, 7]) == ["e5", None]
  with pytest.raises(KeyError):
    idx.delete([7])
  _, got = idx.search(q, 5)
  assert 7 not in got and 100 not in got  # The failed add left no trace.
  for g, b in zip(got, before[1]):
    if 7 not in b:
      np.testing.assert_array_equal(g, b)


def test_save_refuses_to_replace_a_directory_that_is_not_an_index(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  idx = index_lib.Index.build(catalogue(10), np.arange(10), None, backend="exact")
  with pytest.raises(index_lib.IndexLoadError, match="not an index; not replacing"):
    idx.save(tmp_path)
  assert os.listdir(tmp_path) == ["checkpoints"]


def test_exact_index_grows_past_its_spare_rows():
  emb = catalogue(64, seed=12)
  idx = index_lib.Index.build(emb, np.arange(64), [""] * 64, backend="exact")
  capacity = idx._exact.capacity
  more = catalogue(capacity, seed=13)
  idx.add(more, np.arange(1000, 1000 + capacity), [""] * capacity)
  assert idx._exact.capacity > capacity and len(idx) == 64 + capacity
  both = np.concatenate([emb, more])
  q = queries(both, 40, seed=14)
  _, got = idx.search(q, 10)
  _, want = brute_force(both, q, 10)
  np.testing.assert_array_equal(got, np.concatenate([np.arange(64),
                                                     np.arange(1000, 1000 + capacity)])[want])


@pytest.mark.parametrize("backend,storage", [("exact", "bfloat16"), ("exact", "int8"),
                                             ("scann", "float32")])
def test_save_load_round_trip_after_changes(tmp_path, backend, storage):
  emb = catalogue(1500, seed=15)
  model = index_lib.model_id(120, {"model": "tiny"})
  idx = index_lib.Index.build(emb, np.arange(1500), [f"t{i}" for i in range(1500)],
                              ["w1" if i % 2 else "w2" for i in range(1500)],
                              backend=backend, storage=storage, model=model)
  idx.delete([3, 4, 5])
  idx.add(emb[:2] * 2, [9000, 9001], ["Zoë", "名前"], ["w1", "w3"])
  q = queries(emb, 30, seed=16)
  before = idx.search(q, 10)
  idx.save(tmp_path / "index")
  back = index_lib.Index.load(tmp_path / "index", expect_model=model)
  after = back.search(q, 10)
  np.testing.assert_array_equal(after[1], before[1])
  np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
  assert len(back) == 1499 and back.title_of([9001, 3]) == ["名前", None]
  manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
  assert manifest["count"] == 1499 and manifest["model"] == model
  assert manifest["backend"] == backend and manifest["storage"] == storage


def test_bad_indexes_are_refused(tmp_path):
  emb = catalogue(300, seed=17)
  model = index_lib.model_id(10, {"a": 1})
  idx = index_lib.Index.build(emb, np.arange(300), [""] * 300, backend="exact", model=model)
  path = tmp_path / "index"
  idx.save(path)
  with pytest.raises(index_lib.IndexLoadError, match="built from model"):
    index_lib.Index.load(path, expect_model=index_lib.model_id(11, {"a": 1}))
  vectors = path / "vectors.npy"
  data = bytearray(vectors.read_bytes())
  data[-5] ^= 0xFF
  vectors.write_bytes(bytes(data))
  with pytest.raises(index_lib.IndexLoadError, match="checksum"):
    index_lib.Index.load(path)
  vectors.write_bytes(bytes(data[:-100]))
  with pytest.raises(index_lib.IndexLoadError, match="truncated"):
    index_lib.Index.load(path)
  with pytest.raises(index_lib.IndexLoadError, match="not an index"):
    index_lib.Index.load(tmp_path)


def test_failed_save_keeps_the_old_index(tmp_path, monkeypatch):
  emb = catalogue(100, seed=18)
  path = tmp_path / "index"
  index_lib.Index.build(emb, np.arange(100), [""] * 100, backend="exact").save(path)
  bigger = index_lib.Index.build(emb, np.arange(100) + 1000, [""] * 100, backend="exact")

  def boom(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(index_lib.np, "save", boom)
  with pytest.raises(OSError, match="disk full"):
    bigger.save(path)
  monkeypatch.undo()
  assert index_lib.Index.load(path).ids.max() == 99
  assert sorted(os.listdir(tmp_path)) == ["index"]  # No temporary left behind.


WORKER = """
import sys, json, numpy as np, jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
sys.path.insert(0, {repo!r})
from tests.test_index import catalogue, queries
from blink_jax import index as index_lib
emb = catalogue(3001)
idx = index_lib.Index.build(emb, np.arange(3001), [""] * 3001, backend="exact")
local = idx._exact.values.addressable_shards
held = sum(s.data.shape[0] for s in local)
s, i = idx.search(queries(emb, 100, seed=1), 16)
# Changes, save and load with two processes: every process takes part.
idx.delete([0, 1])
idx.add(emb[:2] * 3, [5000, 5001], ["a", "b"])
idx.save(sys.argv[4])
back = index_lib.Index.load(sys.argv[4])
_, j = back.search(emb[:2] * 3, 1)
if jax.process_index() == 0:
  json.dump({{"ids": i.tolist(), "held": held, "total": idx._exact.capacity,
             "after": j[:, 0].tolist(), "count": len(back)}}, open(sys.argv[3], "w"))
"""


@pytest.mark.multiprocess
def test_two_processes_each_hold_a_slice_and_match_one(tmp_path):
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(WORKER.format(repo=REPO))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  out = tmp_path / "out.json"
  procs = [subprocess.Popen([sys.executable, str(script), f"localhost:{port}", str(p),
                             str(out), str(tmp_path / "ix")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for p in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = json.loads(out.read_text())
  assert got["held"] * 2 == got["total"]  # Each process holds half the rows.
  emb = catalogue(3001)
  _, want = brute_force(emb, queries(emb, 100, seed=1), 16)
  assert got["ids"] == want.tolist()
  assert got["after"] == [5000, 5001] and got["count"] == 3001


def test_string_ids_and_urls_survive_save_load_and_changes(tmp_path):
  emb = catalogue(50, seed=40)
  paris = "https://en.wikipedia.org/wiki/Paris"
  keys = [f"Q{i}" for i in range(48)] + [7, paris]  # Strings, an integer, a URL.
  urls = [None] * 49 + [paris]
  idx = index_lib.Index.build(emb, np.arange(50), [f"t{i}" for i in range(50)],
                              backend="exact", keys=keys, urls=urls)
  idx.save(tmp_path / "ix")
  back = index_lib.Index.load(tmp_path / "ix")
  assert back.key_of([0, 48, 49, 99]) == ["Q0", 7, paris, None]
  assert type(back.key_of([48])[0]) is int  # 7 stays 7, not "7".
  assert back.url_of([49, 0]) == [paris, None]
  assert back.label_of(["Q3", 7, "7", "Q999"]).tolist() == [3, 48, -1, -1]
  # Adding by catalogue id: a known id keeps its label (replaced), a new one gets a fresh one.
  labels = back.labels_for(["Q3", "Q100"])
  assert labels.tolist() == [3, 50]
  back.add(emb[:2] * 10, labels, ["new3", "new100"], keys=["Q3", "Q100"],
           urls=["http://a", None])
  _, got = back.search(emb[:2] * 10, 1)
  assert back.key_of(got[:, 0]) == ["Q3", "Q100"]
  assert back.title_of([3]) == ["new3"] and back.url_of([3, 50]) == ["http://a", None]
  back.delete(back.label_of(["Q100"]))
  back.save(tmp_path / "ix")
  again = index_lib.Index.load(tmp_path / "ix")
  assert len(again) == 50 and again.label_of(["Q100"]).tolist() == [-1]
  assert again.key_of([3, 48, 49]) == ["Q3", 7, paris]
  assert again.url_of([3]) == ["http://a"]


def test_an_integer_index_keeps_its_ids_and_its_file(tmp_path):
  emb = catalogue(4, seed=41)
  idx = index_lib.Index.build(emb[:3], [10, 11, 12], ["a", "b", "c"], backend="exact")
  idx.save(tmp_path / "ix")
  lines = (tmp_path / "ix" / "entities.jsonl").read_text().splitlines()
  # The same lines as before string ids existed: no "key", no "url".
  assert [json.loads(x) for x in lines] == [{"id": i, "title": t, "world": None}
                                            for i, t in ((10, "a"), (11, "b"), (12, "c"))]
  assert idx.labels_for([11, 99]).tolist() == [11, 99] and idx.keys is None
  assert idx.key_of([10, 5]) == [10, None] and idx.label_of(["10", 10]).tolist() == [-1, 10]
  # A string id added to it: the integer ids still name their entities.
  labels = idx.labels_for(["Q1", 11])
  assert labels.tolist() == [13, 11]
  idx.add(emb[:2], labels, ["q", "b2"], keys=["Q1", 11])
  assert idx.key_of([10, 11, 13]) == [10, 11, "Q1"] and idx.title_of([11]) == ["b2"]
