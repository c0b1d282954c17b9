"""TensorBoard tags: legal and distinct whatever the metric names; metrics.json readable."""

import glob
import json
import logging
import re
import struct

from tensorboardX.proto import event_pb2

from blink_jax import metric_writer

LEGAL = re.compile(r"[A-Za-z0-9_.\-][A-Za-z0-9_./\-]*")


def _events(logdir) -> list[event_pb2.Event]:
  """Every event of the TFRecord files under `logdir` (CRCs not checked)."""
  events = []
  for path in glob.glob(f"{logdir}/**/events.out.tfevents.*", recursive=True):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      pos += 12  # Length, then its masked CRC.
      events.append(event_pb2.Event.FromString(data[pos:pos + length]))
      pos += length + 4  # Record, then its masked CRC.
  return events


def test_tensorboard_tags_are_legal_and_distinct(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  names = {"test/bi-encoder + cross-encoder/macro/recall@1": 0.5,
           "test/bi-encoder + cross-encoder/macro/recall@64": 0.875,
           "test/linker fast (calibrated)/f1": 0.25,
           "test/linker full (calibrated)/f1": 0.75,
           "test/a b": 1.0, "test/a+b": 2.0, "test/a(b)": 3.0,
           "test/a_b": 5.0,  # Sanitizes like "a b".
           "train/loss": 4.0}
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.scalars(7, names)
  writer.close()

  tags = {v.tag: v.simple_value for e in _events(tmp_path / "tensorboard")
          if e.HasField("summary") for v in e.summary.value}
  assert len(tags) == len(names), sorted(tags)  # Distinct: no two series merged.
  assert all(LEGAL.fullmatch(t) for t in tags), sorted(tags)
  assert sorted(tags.values()) == sorted(names.values())
  assert tags["train/loss"] == 4.0  # Legal names are kept as they are.
  assert tags["test/bi-encoder_plus_cross-encoder/macro/recall_at_1"] == 0.5
  assert not [r for r in caplog.records if "is illegal" in r.getMessage()]
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    assert set(json.loads(f.readline())) == {"step", *names}  # Readable names.


def test_infinite_scalars_stay_out_of_tensorboard(tmp_path):
  # A calibrated "never NIL" threshold is -inf: TensorBoard warned on it.
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.scalars(0, {"nil/full": float("-inf"), "nil/fast": 0.5})
  writer.close()
  tags = {v.tag for e in _events(tmp_path / "tensorboard")
          if e.HasField("summary") for v in e.summary.value}
  assert tags == {"nil/fast"}
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    assert json.loads(f.readline())["nil/full"] is None
