"""bench/accelerator.py: its tiny mode runs (so the script cannot rot) and its FLOP count."""

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "accelerator.py")


def _module():
  spec = importlib.util.spec_from_file_location("bench_accelerator", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_training_flops_by_hand():
  bench = _module()
  # One layer, d=2, f=4, a 3-token context and a 1-token entity. Per token: the four
  # d x d matrices 4*2*2 = 16 multiply-adds, the two feed-forward ones 2*2*4 = 16, so
  # 2*32 = 64 FLOPs; attention 4*T*d. Context 3*(64 + 24), entity 1*(64 + 8); x3.
  bert = dict(num_layers=1, hidden_size=2, intermediate_size=4)
  assert bench.train_flops_per_pair(bert, 3, 1) == 3 * (3 * 88 + 72)
  # BERT-base at 128 + 128 tokens: ~2.3e11 FLOPs (6 x 85M weights x 256 tokens + attention).
  flops = bench.train_flops_per_pair(bench.BERT_BASE, 128, 128)
  assert abs(flops - 6 * 84.9e6 * 256 - 3 * 2 * 128 * 12 * 4 * 128 * 768) / flops < 0.01


def test_peaks_are_looked_up_by_device_kind():
  bench = _module()
  assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert bench.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert bench.peak_tflops("TPU v4", "float32") is None
  assert bench.peak_tflops("cpu", "float32") is None


def test_tiny_mode_runs_on_two_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  out = subprocess.run([sys.executable, SCRIPT, "--tiny", "--repeats=2", "--warmup=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert line["devices"] == 2 and line["tiny"] is True
  train, search = line["train"], line["search"]
  assert train["pairs_per_s"] > 0 and train["mfu"] is None  # No peak is known for a CPU.
  assert train["model_tflops_per_s"] >= 0
  assert search["catalogue"] == 4096 and search["ms_per_batch_median"] > 0
  # bf16 rows of 64 values and a float32 scale and int32 group per row.
  assert search["device_bytes"] >= 4096 * (64 * 2 + 4 + 4)
