r"""Entity retrieval at catalogue scale: our exact and ScaNN indexes against FAISS.

Measures, for each retrieval system, build time, recall@k against exact
search, queries per second (all queries in one call, and one query per call)
and the resident memory the built index keeps, on the same synthetic
catalogue. The question it answers: does the ScaNN back end of
`blink_jax.index` reach recall@64 >= 0.95 at >= 2x the QPS of BLINK's FAISS
HNSW index, in at most half the memory of the float32 matrix?

Data (float32, fixed --seed, written once to a work directory as .npy):
  catalogue  --n x --dim rows: ~N/250 cluster centres (at most 4000) with
             log-normal cluster sizes; row = centre + --spread * noise, with
             per-dimension scales log-uniform over [0.02, 1] (anisotropic),
             a +-10% per-row norm jitter, then one fixed random rotation (so
             the anisotropy is not axis-aligned).
  queries    --queries random catalogue rows + --query_noise * noise of the
             same per-dimension scales: the true top-64 spread over about 5
             clusters (about 90% in the source row's cluster).
  calibration  --calib_queries more, drawn the same way from other rows. Only
             these tune anything (ScaNN's leaves/reorder, IVF's nprobe);
             recall is measured on the evaluation queries.
Ground truth is the exact top-k by inner product from the exact JAX index
(`backend="exact"`, float32), computed in its own process.

Systems (--systems, comma-separated; default all):
  exact_f32, exact_bf16, exact_int8   blink_jax Index, backend="exact".
  scann_f32, scann_bf16, scann_int8   blink_jax Index, backend="scann",
                                      calibrated to --target_recall.
  faiss_hnsw   IndexHNSWFlat, inner product, BLINK's M=128, efConstruction
               200, efSearch 256. Its build is timed on the first
               --hnsw_probe_n rows and extrapolated as n log n; it then runs
               on the largest prefix of the catalogue whose build is predicted
               within --hnsw_budget_s, against the exact top-k of that prefix
               (its JSON line says so: "n" and "note").
  faiss_ivf    IndexIVFFlat, inner product, nlist ~ 4 sqrt(N), k-means on
               --ivf_train_per_list * nlist rows; nprobe is the smallest
               reaching --target_recall on the calibration queries.
FAISS is needed only here (pip install faiss-cpu); without it those systems
print an "error" line.

Each system runs in its own process (this script with --system=...), so that
its memory is measured alone. Memory, from /proc/self/status:
  rss_bytes   VmRSS after the build, once the benchmark's own copy of the
              catalogue has been freed, minus VmRSS before the catalogue was
              read (after imports, the queries and the backend's start-up).
              That is everything the index keeps resident: its copies
              (device arrays, host copies, codes, graphs), its ids, (empty)
              titles and world codes (~20 bytes a row), and any part of the
              input it still references. The exact index keeps only its
              device arrays (on CPU they are in host memory), with 25% spare
              rows for later additions; `memory_bytes` is its own count of
              them.
  build_extra_peak_bytes   peak VmHWM during the build minus VmRSS just
              before it (the catalogue loaded): the build's transient peak.
Time: build_s is all of the build (training, adding, and calibration or
nprobe tuning, which are part of making the index usable at the target
recall). qps_batched: all queries in one search call, after a warm-up call;
the median of --repeats calls when one takes under --repeat_below_s, else
one call. qps_single: one query per call over --single_queries queries, or
fewer once --single_budget_s has passed. Every library uses all the cores it
is given (FAISS and XLA their thread pools, ScaNN its batched-parallel pool);
single-query calls are one query, so mostly one core.

Prints one JSON line per system, then one summary line (ratios and goals);
progress goes to stderr.

  python bench/retrieval.py                                  # 1M x 768, all
  python bench/retrieval.py --n 50000 --queries 1000 --hnsw_budget_s 60
  python bench/retrieval.py --systems=exact_f32,scann_int8 --n 200000
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

# jax, scann and faiss are imported only in the per-system processes.

SYSTEMS = ("exact_f32", "exact_bf16", "exact_int8", "scann_f32", "scann_bf16",
           "scann_int8", "faiss_hnsw", "faiss_ivf")
STORAGE = {"f32": "float32", "bf16": "bfloat16", "int8": "int8"}
CHUNK = 65536  # Rows generated per step; part of the data's definition.
# Flags that define the data: a --workdir is reused only if they all match.
DATA_FLAGS = ("n", "dim", "queries", "calib_queries", "k", "clusters", "spread",
              "query_noise", "seed")
FAISS_MISSING = "faiss not installed: pip install faiss-cpu"


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=1_000_000, help="Catalogue rows.")
  p.add_argument("--dim", type=int, default=768)
  p.add_argument("--queries", type=int, default=10_000, help="Evaluation queries.")
  p.add_argument("--calib_queries", type=int, default=1000,
                 help="Held-out queries for ScaNN calibration and IVF nprobe.")
  p.add_argument("--k", type=int, default=64)
  p.add_argument("--clusters", type=int, default=0,
                 help="Cluster centres (0: N/250, between 16 and 4000).")
  p.add_argument("--spread", type=float, default=1.5,
                 help="Within-cluster noise, relative to the centres' scale.")
  p.add_argument("--query_noise", type=float, default=1.5,
                 help="Query noise, relative to the centres' scale.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--systems", default=",".join(SYSTEMS),
                 help=f"Comma-separated subset of {','.join(SYSTEMS)}.")
  p.add_argument("--target_recall", type=float, default=0.95)
  p.add_argument("--repeats", type=int, default=3,
                 help="Batched search calls timed (median) when one is fast.")
  p.add_argument("--repeat_below_s", type=float, default=30.0,
                 help="Repeat the batched call only if one takes less.")
  p.add_argument("--single_queries", type=int, default=200)
  p.add_argument("--single_budget_s", type=float, default=60.0,
                 help="Stop single-query timing after this long (>= 3 queries).")
  p.add_argument("--hnsw_m", type=int, default=128)
  p.add_argument("--hnsw_ef_construction", type=int, default=200)
  p.add_argument("--hnsw_ef_search", type=int, default=256)
  p.add_argument("--hnsw_budget_s", type=float, default=900.0,
                 help="Predicted HNSW build time allowed; N is cut to fit.")
  p.add_argument("--hnsw_probe_n", type=int, default=20_000,
                 help="Rows of the timed HNSW build the prediction comes from.")
  p.add_argument("--ivf_nlist", type=int, default=0, help="0: 4 sqrt(N).")
  p.add_argument("--ivf_train_per_list", type=int, default=64,
                 help="k-means training rows per list (FAISS wants >= 39).")
  p.add_argument("--workdir", default=None,
                 help="Where the data and ground truth go (default: a temporary "
                      "directory, removed at the end). An existing one made with "
                      "the same data flags is reused.")
  p.add_argument("--keep_workdir", action="store_true")
  p.add_argument("--summarize", default=None,
                 help="Comma-separated files of this script's JSON lines (e.g. "
                      "from runs of different --systems): print only the summary "
                      "line over them, for their --n.")
  # Internal: what a child process does.
  p.add_argument("--system", default=None, help=argparse.SUPPRESS)
  p.add_argument("--stage", default=None, choices=("gt", "hnsw_plan"),
                 help=argparse.SUPPRESS)
  p.add_argument("--gt_rows", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--gt_name", default="gt", help=argparse.SUPPRESS)
  p.add_argument("--hnsw_n", type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _log(msg: str) -> None:
  print(f"[retrieval {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- machine
def _machine() -> str:
  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  mem = _meminfo("MemTotal")
  cores = len(os.sched_getaffinity(0))
  return f"{cores} cores ({os.cpu_count()} online), {model}, {mem / 2**30:.0f} GiB RAM"


def _meminfo(field: str) -> int:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0


def _status(field: str) -> int:
  """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes.

  Memory that malloc holds free is first given back to the system, so that
  VmRSS counts what is in use (glibc keeps freed blocks below its mmap
  threshold, up to 32 MiB each, which matters at small --n).
  """
  _malloc_trim()
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  return 0


def _malloc_trim() -> None:
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass  # Not glibc.


def _reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ------------------------------------------------------------------------ data
def _clusters(args) -> int:
  return args.clusters or min(4000, max(16, args.n // 250))


def _generate(args, workdir: str) -> None:
  """Writes catalogue.npy, queries.npy and calib.npy (see the docstring)."""
  from numpy.lib.format import open_memmap  # pylint: disable=g-import-not-at-top
  n, d, c = args.n, args.dim, _clusters(args)
  rng = np.random.default_rng([args.seed, 0])
  scales = np.exp(rng.uniform(math.log(0.02), 0.0, d))
  scales = (scales / np.linalg.norm(scales)).astype(np.float32)
  rot = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
  weights = np.exp(rng.normal(0.0, 0.5, c))
  weights /= weights.sum()
  centres = rng.standard_normal((c, d), dtype=np.float32) * scales
  cat = open_memmap(os.path.join(workdir, "catalogue.npy"), "w+", np.float32, (n, d))
  t = time.perf_counter()
  for start in range(0, n, CHUNK):
    crng = np.random.default_rng([args.seed, 1, start // CHUNK])
    m = min(CHUNK, n - start)
    x = crng.standard_normal((m, d), dtype=np.float32)
    x *= args.spread * scales
    x += centres[crng.choice(c, m, p=weights)]
    x *= np.exp(crng.normal(0.0, 0.1, m)).astype(np.float32)[:, None]
    cat[start:start + m] = x @ rot
    if time.perf_counter() - t > 30:
      _log(f"  generated {start + m:,}/{n:,} rows")
      t = time.perf_counter()
  cat.flush()
  qrng = np.random.default_rng([args.seed, 2])
  total = args.queries + args.calib_queries
  base = qrng.choice(n, total, replace=total > n)
  for name, rows in (("queries", base[:args.queries]), ("calib", base[args.queries:])):
    order = np.argsort(rows)  # Memory-mapped rows read in order, put back.
    q = np.empty((len(rows), d), np.float32)
    q[order] = cat[rows[order]]
    noise = qrng.standard_normal((len(rows), d), dtype=np.float32) * scales
    q += (args.query_noise * noise) @ rot
    np.save(os.path.join(workdir, f"{name}.npy"), q)
  del cat


def _load_rows(workdir: str, n: int) -> np.ndarray:
  """The first n catalogue rows, read into (anonymous) memory."""
  mm = np.load(os.path.join(workdir, "catalogue.npy"), mmap_mode="r")
  out = np.empty((n, mm.shape[1]), np.float32)
  for start in range(0, n, CHUNK):
    out[start:start + CHUNK] = mm[start:min(n, start + CHUNK)]
  del mm  # File pages are unmapped: they no longer count in VmRSS.
  return out


def recall_at_k(got: np.ndarray, exact: np.ndarray) -> float:
  """Share of the exact top-k ids found in each result row (ids are distinct)."""
  both = np.sort(np.concatenate([got, exact], axis=1), axis=1)
  hits = (both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)
  return float(hits.sum() / max(1, (exact >= 0).sum()))


# --------------------------------------------------------------------- timing
def _time_batched(search, queries, args) -> tuple[float, list[float], np.ndarray]:
  """(QPS, seconds per call, ids of the first call) for all queries per call."""
  t = time.perf_counter()
  ids = search(queries)
  times = [time.perf_counter() - t]
  if times[0] < args.repeat_below_s:
    for _ in range(args.repeats - 1):
      t = time.perf_counter()
      search(queries)
      times.append(time.perf_counter() - t)
  return len(queries) / statistics.median(times), times, ids


def _time_single(search, queries, args) -> tuple[float, int, float]:
  """(QPS, queries timed, median latency in ms) for one query per call."""
  search(queries[:1])
  times, start = [], time.perf_counter()
  for i in range(min(args.single_queries, len(queries))):
    t = time.perf_counter()
    search(queries[i:i + 1])
    times.append(time.perf_counter() - t)
    if time.perf_counter() - start > args.single_budget_s and len(times) >= 3:
      break
  return len(times) / sum(times), len(times), 1000 * statistics.median(times)


# ------------------------------------------------------------ child: ground truth
def _child_gt(args, workdir: str) -> None:
  """Exact top-k of the queries and calibration queries over the first rows."""
  import jax  # pylint: disable=g-import-not-at-top
  from blink_jax import index as index_lib  # pylint: disable=g-import-not-at-top
  jax.devices()
  n = args.gt_rows
  cat = np.load(os.path.join(workdir, "catalogue.npy"), mmap_mode="r")[:n]
  t = time.perf_counter()
  idx = index_lib.Index.build(cat, np.arange(n), [""] * n, backend="exact",
                              storage="float32")
  for name in ("queries", "calib"):
    q = np.load(os.path.join(workdir, f"{name}.npy"))
    _, ids = idx.search(q, args.k)
    np.save(os.path.join(workdir, f"{args.gt_name}_{name}.npy"), ids)
  print(json.dumps({"gt_s": round(time.perf_counter() - t, 2), "n": n}))


# ---------------------------------------------------------------- child: HNSW plan
def _predict_hnsw_s(t_probe: float, n_probe: int, n: int) -> float:
  return t_probe * (n * math.log(n)) / (n_probe * math.log(n_probe))


def _child_hnsw_plan(args, workdir: str) -> None:
  """Times an HNSW build of the first --hnsw_probe_n rows; picks the N to run."""
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(json.dumps({"error": FAISS_MISSING}))
    return
  n_probe = min(args.hnsw_probe_n, args.n)
  data = _load_rows(workdir, n_probe)
  index = faiss.IndexHNSWFlat(args.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
  index.hnsw.efConstruction = args.hnsw_ef_construction
  t = time.perf_counter()
  index.add(data)
  t_probe = time.perf_counter() - t
  if n_probe >= args.n:
    n_run = args.n
  else:
    lo, hi = n_probe, args.n  # Largest n <= N predicted within budget.
    if _predict_hnsw_s(t_probe, n_probe, hi) <= args.hnsw_budget_s:
      lo = hi
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if _predict_hnsw_s(t_probe, n_probe, mid) <= args.hnsw_budget_s:
        lo = mid
      else:
        hi = mid
    n_run = lo if lo == args.n else max(n_probe, lo // 1000 * 1000)
  print(json.dumps({
      "probe_n": n_probe, "probe_s": round(t_probe, 2), "n": n_run,
      "predicted_full_s": round(_predict_hnsw_s(t_probe, n_probe, args.n), 1),
      "predicted_s": round(_predict_hnsw_s(t_probe, n_probe, n_run), 1)}))


def _tune_nprobe(idx, calib, gt_calib, args) -> tuple[int, float, dict]:
  """Smallest nprobe reaching --target_recall on the calibration queries.

  Doubles nprobe from 1 until the target is reached (or every list is
  probed), then bisects between the last miss and the first hit. Returns
  (nprobe, its calibration recall, {nprobe: recall} of every probe tried).
  """
  sweep: dict[int, float] = {}

  def rec(p: int) -> float:
    if p not in sweep:
      idx.nprobe = p
      sweep[p] = recall_at_k(idx.search(calib, args.k)[1], gt_calib)
    return sweep[p]

  p = 1
  while rec(p) < args.target_recall and p < idx.nlist:
    p = min(idx.nlist, 2 * p)
  if rec(p) >= args.target_recall and p > 1:
    lo, hi = p // 2, p  # rec(lo) < target, rec(hi) >= target.
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if rec(mid) >= args.target_recall else (mid, hi)
    p = hi
  return p, round(sweep[p], 4), {str(q): round(r, 4) for q, r in sorted(sweep.items())}


# ------------------------------------------------------------------ child: system
def _child_system(args, workdir: str) -> dict:
  """Builds and measures one system in this (fresh) process."""
  system = args.system
  n = args.hnsw_n if system == "faiss_hnsw" and args.hnsw_n else args.n
  gt_name = "gt" if n == args.n else f"gt_first{n}"
  queries = np.load(os.path.join(workdir, "queries.npy"))
  calib = np.load(os.path.join(workdir, "calib.npy"))
  gt = np.load(os.path.join(workdir, f"{gt_name}_queries.npy"))
  gt_calib = np.load(os.path.join(workdir, f"{gt_name}_calib.npy"))
  out: dict = {}

  if system.startswith(("exact_", "scann_")):
    import jax  # pylint: disable=g-import-not-at-top
    from blink_jax import index as index_lib  # pylint: disable=g-import-not-at-top
    jax.devices()  # Start the backend before the baseline.
    backend, storage = system.split("_")
    storage = STORAGE[storage]

    def build(data):
      ids = np.arange(len(data))
      return index_lib.Index.build(
          data, ids, [""] * len(data), backend=backend, storage=storage, k=args.k,
          target_recall=args.target_recall, sample_queries=calib, seed=args.seed)

    def finish(idx):
      out["storage"] = storage
      if backend == "exact":
        out["memory_bytes"] = idx.memory_bytes()
        out["device_rows"] = idx._exact.capacity  # pylint: disable=protected-access
        out["devices"] = idx._exact.n_dev  # pylint: disable=protected-access
      else:
        out["scann_params"] = dataclasses.asdict(idx._scann.params)  # pylint: disable=protected-access
        out["calibration"] = getattr(idx, "calibration", None)

    search = lambda idx, q: idx.search(q, args.k)[1]
  else:
    try:
      import faiss  # pylint: disable=g-import-not-at-top
    except ImportError:
      return {"error": FAISS_MISSING}
    out["faiss"] = faiss.__version__
    out["threads"] = faiss.omp_get_max_threads()

    if system == "faiss_hnsw":
      def build(data):
        idx = faiss.IndexHNSWFlat(args.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = args.hnsw_ef_construction
        idx.add(data)
        idx.hnsw.efSearch = args.hnsw_ef_search
        return idx

      def finish(_):
        out["hnsw"] = {"M": args.hnsw_m, "efConstruction": args.hnsw_ef_construction,
                       "efSearch": args.hnsw_ef_search}
    else:
      nlist = args.ivf_nlist or max(1, int(round(4 * math.sqrt(n))))

      def build(data):
        quantizer = faiss.IndexFlatIP(args.dim)
        idx = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train_n = min(len(data), args.ivf_train_per_list * nlist)
        rows = np.sort(np.random.default_rng([args.seed, 3]).choice(
            len(data), train_n, replace=False))
        t = time.perf_counter()
        idx.train(data[rows])
        out["train_s"], out["train_rows"] = round(time.perf_counter() - t, 2), train_n
        t = time.perf_counter()
        idx.add(data)
        out["add_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        out["nprobe"], out["calib_recall"], out["nprobe_sweep"] = _tune_nprobe(
            idx, calib, gt_calib, args)
        out["tune_s"] = round(time.perf_counter() - t, 2)
        idx.nprobe = out["nprobe"]
        return idx

      def finish(idx):
        out["nlist"] = nlist
        out["nprobe_selected"] = idx.nprobe

    search = lambda idx, q: idx.search(q, args.k)[1]

  # Memory: baseline after imports and queries; catalogue in; build; catalogue out.
  gc.collect()
  rss0 = _status("VmRSS")
  data = _load_rows(workdir, n)
  gc.collect()
  rss1 = _status("VmRSS")
  peak_ok = _reset_peak()
  _log(f"{system}: building over {n:,} rows")
  t = time.perf_counter()
  idx = build(data)
  build_s = time.perf_counter() - t
  peak = _status("VmHWM")
  del data
  gc.collect()
  rss3 = _status("VmRSS")
  finish(idx)
  _log(f"{system}: built in {build_s:.1f} s; timing searches")

  search(idx, queries[:min(256, len(queries))])  # Warm-up (and compilation).
  qps_b, times_b, got = _time_batched(lambda q: search(idx, q), queries, args)
  recall = recall_at_k(got, gt)
  qps_s, n_single, lat_ms = _time_single(lambda q: search(idx, q), queries, args)
  _log(f"{system}: recall@{args.k} {recall:.4f}, {qps_b:.1f} q/s batched, "
       f"{qps_s:.1f} q/s single")
  result = {
      "system": system, "n": n, "dim": args.dim, "k": args.k, "queries": len(queries),
      "build_s": round(build_s, 2), "recall_at_k": round(recall, 4),
      "qps_batched": round(qps_b, 2), "qps_single": round(qps_s, 2),
      "rss_bytes": rss3 - rss0,
      "rss_bytes_over_fp32": round((rss3 - rss0) / (n * args.dim * 4), 3),
      "build_extra_peak_bytes": (peak - rss1) if peak_ok else None,
      "catalogue_bytes": n * args.dim * 4,
      "batched_call_s": [round(x, 3) for x in times_b],
      "single_queries_timed": n_single, "single_latency_ms_median": round(lat_ms, 3),
      **out,
  }
  if system == "faiss_hnsw" and n < args.n:
    result["note"] = (
        f"HNSW ran on the first {n:,} of {args.n:,} rows, with the exact top-{args.k} "
        f"of those rows as ground truth, because its build at N={args.n:,} is "
        f"predicted to exceed --hnsw_budget_s={args.hnsw_budget_s:g} s on this "
        "machine; QPS at the smaller N flatters HNSW against the others.")
  return result


# ---------------------------------------------------------------------- parent
def _run_child(argv: list[str]) -> tuple[dict, float]:
  """Runs this script with argv; (its last stdout JSON line, wall seconds)."""
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv,
                        stdout=subprocess.PIPE, text=True, check=False)
  wall = time.perf_counter() - t
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    return {"error": f"child exited with status {proc.returncode} (see stderr)"}, wall
  try:
    return json.loads(lines[-1]), wall
  except json.JSONDecodeError:
    return {"error": f"child printed no JSON: {lines[-1][:200]!r}"}, wall


def _prepare(args, workdir: str) -> None:
  """Data and ground truth in workdir, reused when the data flags match."""
  meta_path = os.path.join(workdir, "meta.json")
  want = {f: getattr(args, f) for f in DATA_FLAGS}
  have = None
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      have = json.load(f)
  if have != want:
    for name in os.listdir(workdir):  # Only what this script writes.
      if name == "meta.json" or re.fullmatch(r"(catalogue|queries|calib|gt(_first\d+)?"
                                             r"_(queries|calib))\.npy", name):
        os.remove(os.path.join(workdir, name))
    _log(f"generating {args.n:,} x {args.dim} catalogue, {args.queries:,} queries, "
         f"{args.calib_queries:,} calibration queries in {workdir}")
    t = time.perf_counter()
    _generate(args, workdir)
    _log(f"generated in {time.perf_counter() - t:.1f} s")
    with open(meta_path, "w") as f:
      json.dump(want, f)
  else:
    _log(f"reusing the data in {workdir}")
  _ground_truth(args, workdir, args.n, "gt")


def _ground_truth(args, workdir: str, rows: int, name: str) -> None:
  if all(os.path.exists(os.path.join(workdir, f"{name}_{s}.npy"))
         for s in ("queries", "calib")):
    return
  _log(f"exact top-{args.k} ground truth over {rows:,} rows")
  res, wall = _run_child(_child_argv(args, workdir) + [
      "--stage=gt", f"--gt_rows={rows}", f"--gt_name={name}"])
  if "error" in res:
    raise RuntimeError(f"ground truth failed: {res['error']}")
  _log(f"ground truth in {wall:.1f} s")


def _child_argv(args, workdir: str) -> list[str]:
  skip = {"system", "stage", "gt_rows", "gt_name", "hnsw_n", "workdir", "keep_workdir",
          "summarize"}
  argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in skip and v is not None]
  return argv + [f"--workdir={workdir}"]


def _summary(results: dict, args, machine: str) -> dict:
  """Ratios of ScaNN to FAISS HNSW and the three goals.

  The ScaNN variant compared is, among those with recall >= --target_recall,
  the one meeting most of the other two goals (QPS >= 2x HNSW, batched and
  single; memory <= half the float32 matrix), then the fastest batched;
  "scann_variants" has every variant's numbers.
  """
  fp32 = args.n * args.dim * 4
  ok = lambda r: r and "error" not in r
  scann = {s: r for s, r in results.items() if s.startswith("scann_") and ok(r)}
  hnsw = results.get("faiss_hnsw")
  hnsw = hnsw if ok(hnsw) else None
  ratio = lambda a, b: round(a / b, 2) if a and b else None

  def judge(r):
    qb = ratio(r["qps_batched"], hnsw and hnsw["qps_batched"])
    qs = ratio(r["qps_single"], hnsw and hnsw["qps_single"])
    return {"recall_at_k": r["recall_at_k"], "qps_batched": r["qps_batched"],
            "qps_single": r["qps_single"],
            "rss_bytes_over_fp32": round(r["rss_bytes"] / fp32, 3),
            "qps_batched_over_hnsw": qb, "qps_single_over_hnsw": qs,
            "goal_recall": r["recall_at_k"] >= args.target_recall,
            "goal_qps": None if qb is None or qs is None else qb >= 2 and qs >= 2,
            "goal_mem": r["rss_bytes"] <= 0.5 * fp32}

  variants = {s: judge(r) for s, r in scann.items()}
  good = {s: v for s, v in variants.items() if v["goal_recall"]}
  best = max(good, key=lambda s: (bool(good[s]["goal_qps"]) + good[s]["goal_mem"],
                                  good[s]["qps_batched"])) if good else None
  v = good.get(best)
  out = {"summary": True, "n": args.n, "dim": args.dim, "k": args.k,
         "target_recall": args.target_recall, "scann_compared": best,
         "scann_qps_batched_over_hnsw": v and v["qps_batched_over_hnsw"],
         "scann_qps_single_over_hnsw": v and v["qps_single_over_hnsw"],
         "scann_mem_over_fp32": v and v["rss_bytes_over_fp32"],
         "scann_recall_at_k": v and v["recall_at_k"],
         "hnsw_recall_at_k": hnsw and hnsw["recall_at_k"],
         "hnsw_n": hnsw and hnsw["n"],
         "goal_scann_recall_ge_0.95": bool(good) if scann else None,
         "goal_qps_ge_2x_hnsw": v and v["goal_qps"],
         "goal_qps_batched_ge_2x_hnsw": (None if not v or v["qps_batched_over_hnsw"] is None
                                         else v["qps_batched_over_hnsw"] >= 2),
         "goal_qps_single_ge_2x_hnsw": (None if not v or v["qps_single_over_hnsw"] is None
                                        else v["qps_single_over_hnsw"] >= 2),
         "goal_mem_le_half_fp32": v and v["goal_mem"],
         "scann_variants_meeting_all_goals": sorted(
             s for s, x in variants.items()
             if x["goal_recall"] and x["goal_qps"] and x["goal_mem"]),
         "scann_variants": variants, "fp32_matrix_bytes": fp32}
  notes = []
  if not scann:
    notes.append("no ScaNN result")
  elif not good:
    notes.append(f"no ScaNN variant reached recall {args.target_recall}: nothing "
                 "compared")
  if hnsw is None:
    notes.append("no HNSW result: QPS ratios are not computed")
  else:
    if hnsw["n"] < args.n:
      notes.append(f"HNSW ran on {hnsw['n']:,} rows, not {args.n:,} (build time "
                   "budget): its QPS at the smaller N flatters it, so the QPS ratios "
                   "understate ScaNN's advantage at equal N")
    if v and hnsw["recall_at_k"] > v["recall_at_k"]:
      notes.append(f"HNSW at BLINK's settings reaches recall {hnsw['recall_at_k']}, "
                   f"ScaNN is calibrated to {args.target_recall} "
                   f"({v['recall_at_k']}): the QPS ratios are at unequal recall")
  out["note"] = "; ".join(notes)
  out["machine"] = machine
  return out


def main() -> None:
  args = _parse_args()
  if args.stage or args.system:
    if args.stage == "gt":
      _child_gt(args, args.workdir)
    elif args.stage == "hnsw_plan":
      _child_hnsw_plan(args, args.workdir)
    else:
      print(json.dumps(_child_system(args, args.workdir)), flush=True)
    return

  if args.summarize:
    results = {}
    for path in args.summarize.split(","):
      with open(path) as f:
        for line in f:
          line = line.strip()
          res = json.loads(line) if line.startswith("{") else {}
          if res.get("system") in SYSTEMS:
            results[res["system"]] = res  # The last line of a system wins.
    full = [r for r in results.values() if "error" not in r and r["system"] != "faiss_hnsw"]
    if full:
      args.n, args.dim, args.k = full[0]["n"], full[0]["dim"], full[0]["k"]
    machine = next((r["machine"] for r in results.values() if "machine" in r), _machine())
    print(json.dumps(_summary(results, args, machine)), flush=True)
    return

  systems = [s.strip() for s in args.systems.split(",") if s.strip()]
  unknown = sorted(set(systems) - set(SYSTEMS))
  if unknown:
    raise SystemExit(f"Unknown systems {unknown}; choose from {SYSTEMS}.")
  machine = _machine()
  _log(f"machine: {machine}; load average {os.getloadavg()[0]:.2f}")
  workdir = args.workdir or tempfile.mkdtemp(prefix="blink_retrieval_")
  os.makedirs(workdir, exist_ok=True)
  try:
    _prepare(args, workdir)
    results = {}
    for system in systems:
      extra, plan = [], None
      t0 = time.perf_counter()
      if system == "faiss_hnsw":
        _log("faiss_hnsw: timing a build of the first "
             f"{min(args.hnsw_probe_n, args.n):,} rows to choose its N")
        plan, _ = _run_child(_child_argv(args, workdir) + ["--stage=hnsw_plan"])
        if "error" not in plan:
          _log(f"faiss_hnsw: plan {plan}")
          if plan["n"] < args.n:
            _ground_truth(args, workdir, plan["n"], f"gt_first{plan['n']}")
          extra = [f"--hnsw_n={plan['n']}"]
      if plan is not None and "error" in plan:
        res = dict(plan)
      else:
        res, _ = _run_child(_child_argv(args, workdir) + [f"--system={system}"] + extra)
      res = {"system": system, **res} if "error" in res else res
      if plan is not None and "error" not in plan:
        res["build_plan"] = plan
      res["wall_s"] = round(time.perf_counter() - t0, 1)
      res["load_average"] = round(os.getloadavg()[0], 2)
      res["machine"] = machine
      results[system] = res
      print(json.dumps(res), flush=True)
    print(json.dumps(_summary(results, args, machine)), flush=True)
  finally:
    if not args.keep_workdir and not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
