r"""Load test of the HTTP service: N concurrent clients for a bounded time, one JSON line.

Starts `python -m blink_jax.serve` on a free localhost port against
`--workdir` (a trained linker: the demo's /tmp/blink_demo, or any workdir
after --config.mode=train_linker), waits for /readyz, then runs `--clients`
concurrent clients for `--seconds` (after `--warmup_seconds` untimed), and
stops by itself. Each client sends POST /link with `--texts_per_request`
documents of the workdir's test documents (data/test.docs.jsonl), waits for
the answer and sends the next; a `--malformed` share of requests is bad on
purpose (broken JSON, wrong types, unknown fields, too many texts, a text too
long, a body over the limit, a bad mode or top_k) and must get its 4xx.

Printed: requests/s and mentions/s (spans in the answers of good requests),
p50 / p99 latency of good requests, the count of each status, errors (a 5xx,
a dropped connection, or any status other than the one expected), the mean
batch the server ran (/healthz), the server's RSS when ready, when the timed
run starts (after the untimed warm-up traffic), at its end and its maximum
(sampled each second), and the CPU other processes used meanwhile (the
machine may be shared: "other_load_cores").

The reference is the library in this process, before the server starts, on
the same documents and the same linker: `Linker.link` one request's texts per
call, one call after another (what a server without batching does), and
`Linker.link` over `--max_batch` texts per call (the most batching can give).

  python bench/serve.py --workdir=/tmp/blink_demo                 # ~2 min
  python bench/serve.py --workdir=/tmp/blink_demo --seconds=10 --clients=4   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import timing  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="/tmp/blink_demo", help="A workdir with a trained linker.")
  p.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
  p.add_argument("--seconds", type=float, default=30.0, help="Timed load, seconds.")
  p.add_argument("--warmup_seconds", type=float, default=5.0, help="Untimed load first.")
  p.add_argument("--texts_per_request", type=int, default=1)
  p.add_argument("--malformed", type=float, default=0.1, help="Share of bad requests.")
  p.add_argument("--mode", default="fast", choices=("fast", "full"))
  p.add_argument("--top_k", type=int, default=0, help="Candidates asked per span.")
  p.add_argument("--max_wait_ms", type=float, default=5.0, help="The server's batching wait.")
  p.add_argument("--max_batch", type=int, default=32, help="The server's texts per call.")
  p.add_argument("--window_batch", type=int, default=None,
                 help="The server's windows per detection call (default: the server's).")
  p.add_argument("--mention_batch", type=int, default=None,
                 help="The server's mentions per bi-encoder call (default: the server's).")
  p.add_argument("--pair_batch", type=int, default=None,
                 help="The server's pairs per cross-encoder call (default: the server's).")
  p.add_argument("--max_body_bytes", type=int, default=1 << 16,
                 help="The server's body limit (small, so a too-large body stays cheap).")
  p.add_argument("--library_seconds", type=float, default=10.0,
                 help="Seconds for each of the two library references.")
  p.add_argument("--ready_timeout", type=float, default=600.0)
  return p.parse_args()


# ------------------------------------------------------------------- requests
def _malformed(max_body_bytes: int) -> list[tuple[str, bytes, int]]:
  """(kind, body, expected status) of the bad requests mixed in."""
  j = lambda x: json.dumps(x).encode()
  return [
      ("broken_json", b'{"texts": ["a", ', 422),
      ("texts_not_a_list", j({"texts": "a text"}), 422),
      ("text_not_a_string", j({"texts": [17]}), 422),
      ("unknown_field", j({"texts": ["a"], "text": "a"}), 422),
      ("missing_texts", j({"mode": "fast"}), 422),
      ("too_many_texts", j({"texts": ["a"] * 1000}), 422),
      ("text_too_long", j({"texts": ["a " * 15_000]}), 422),
      ("body_too_large", j({"texts": ["a" * (max_body_bytes + 1)]}), 413),
      ("bad_mode", j({"texts": ["a"], "mode": "fastest"}), 422),
      ("top_k_too_big", j({"texts": ["a"], "top_k": 10_000}), 422),
      ("not_an_object", b"[1, 2, 3]", 422),
      ("lone_surrogate", b'{"texts": ["\\ud800"]}', 422),
  ]


def _texts(workdir: str) -> list[str]:
  path = os.path.join(workdir, "data", "test.docs.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"{path} is missing: train the demo first (README, 'Run the demo').")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f if line.strip()]


def _requests(texts: list[str], per: int) -> list[list[str]]:
  """Consecutive groups of `per` texts, wrapping around."""
  n = max(len(texts), per)
  return [[texts[(i + j) % len(texts)] for j in range(per)] for i in range(0, n, per)]


# -------------------------------------------------------------- the library
def _library(args, requests: list[list[str]]) -> dict:
  """mentions/s of Linker.link: per request, one after another; and in full batches."""
  from blink_jax.inference import linker as linker_lib  # pylint: disable=g-import-not-at-top
  linker = linker_lib.Linker.load(args.workdir, mode=args.mode)
  linker.warm_up([args.mode])  # As the server does before it is ready.
  flat = [t for r in requests for t in r]
  batches = [flat[i:i + args.max_batch] for i in range(0, len(flat), args.max_batch)]

  def rate(calls: list[list[str]]) -> dict:
    texts = mentions = 0
    cpu0, busy0 = _cpu_seconds(os.getpid()), timing.busy_cpu_seconds()
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < args.library_seconds or not i:
      out = linker.link(calls[i % len(calls)], mode=args.mode, top_k=args.top_k)
      texts += len(out)
      mentions += sum(map(len, out))
      i += 1
    dt = time.perf_counter() - start
    cpu = _cpu_seconds(os.getpid()) - cpu0
    return {"calls": i, "texts_per_s": round(texts / dt, 2),
            "mentions_per_s": round(mentions / dt, 2),
            "mentions_per_cpu_s": round(mentions / cpu, 2),
            "other_load_cores": round(max(0.0, timing.busy_cpu_seconds() - busy0 - cpu) / dt, 2)}

  return {"per_request": rate(requests), "batched": rate(batches)}


# ---------------------------------------------------------------- the server
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return round(int(line.split()[1]) / 1024, 1)
  return float("nan")


def _cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of a process (and its finished children)."""
  with open(f"/proc/{pid}/stat", encoding="ascii") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _start_server(args, port: int, log) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "blink_jax.serve", f"--workdir={args.workdir}",
         f"--port={port}", f"--mode={args.mode}", f"--max_wait_ms={args.max_wait_ms}",
         f"--max_batch={args.max_batch}", f"--max_body_bytes={args.max_body_bytes}"]
  for flag in ("window_batch", "mention_batch", "pair_batch"):
    if getattr(args, flag) is not None:
      cmd.append(f"--{flag}={getattr(args, flag)}")
  if args.mode == "fast":
    cmd.append("--nofull_mode")  # Not asked for: its memory and warm-up are not measured.
  return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


async def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
  import httpx  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  async with httpx.AsyncClient(timeout=5) as client:
    while time.perf_counter() - start < timeout:
      if proc.poll() is not None:
        raise RuntimeError(f"The server exited ({proc.returncode}) before it was ready.")
      try:
        if (await client.get(f"{url}/readyz")).status_code == 200:
          return time.perf_counter() - start
      except httpx.TransportError:
        pass
      await asyncio.sleep(0.5)
  raise RuntimeError(f"The server was not ready after {timeout} s.")


async def _load(args, url: str, pid: int, requests: list[list[str]]) -> dict:
  """Runs the clients: untimed warm-up, then the timed run; the figures of the latter."""
  import httpx  # pylint: disable=g-import-not-at-top
  bad = _malformed(args.max_body_bytes)
  good = [json.dumps({"texts": r, "mode": args.mode, "top_k": args.top_k}).encode()
          for r in requests]
  headers = {"content-type": "application/json"}
  # (kind, status or "connection", as expected?, seconds, mentions found)
  records: list[tuple[str, int | str, bool, float, int]] = []
  timed = {"on": False}
  rss_samples: list[float] = []

  async def client(seed: int, until: float):
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as http:
      while time.perf_counter() < until:
        if rng.random() < args.malformed:
          kind, body, want = rng.choice(bad)
        else:
          kind, body, want = "good", rng.choice(good), 200
        t = time.perf_counter()
        try:
          r = await http.post(f"{url}/link", content=body, headers=headers)
          status, answer = r.status_code, r.json()
          mentions = sum(map(len, answer["results"])) if status == 200 else 0
          # A 4xx must say what is wrong.
          expected = status == want and (status == 200 or bool(answer.get("error")))
        except (httpx.TransportError, ValueError):  # Dropped connection, or not JSON.
          status, mentions, expected = "connection", 0, False
        if timed["on"]:
          records.append((kind, status, expected, time.perf_counter() - t, mentions))

  async def sample_rss(until: float):
    while time.perf_counter() < until:
      rss_samples.append(_rss_mb(pid))
      await asyncio.sleep(1.0)

  seed = 0
  end = time.perf_counter() + args.warmup_seconds
  await asyncio.gather(*(client(seed + i, end) for i in range(args.clients)))
  async with httpx.AsyncClient() as http:
    before = (await http.get(f"{url}/healthz")).json()
  rss_start = _rss_mb(pid)
  cpu0, srv0, own0 = timing.busy_cpu_seconds(), _cpu_seconds(pid), _cpu_seconds(os.getpid())
  timed["on"] = True
  start = time.perf_counter()
  end = start + args.seconds
  await asyncio.gather(sample_rss(end),
                       *(client(seed + 1000 + i, end) for i in range(args.clients)))
  elapsed = time.perf_counter() - start
  cpu1, srv1, own1 = timing.busy_cpu_seconds(), _cpu_seconds(pid), _cpu_seconds(os.getpid())
  async with httpx.AsyncClient() as http:
    after = (await http.get(f"{url}/healthz")).json()
  rss_end = _rss_mb(pid)

  good_records = [r for r in records if r[0] == "good" and r[1] == 200]
  latencies = sorted(r[3] for r in good_records)
  pct = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)
  statuses: dict[str, int] = {}
  for r in records:
    statuses[str(r[1])] = statuses.get(str(r[1]), 0) + 1
  batches = after["batches"] - before["batches"]
  return {
      "seconds": round(elapsed, 1),
      "requests": len(records),
      "requests_per_s": round(len(records) / elapsed, 2),
      "good_requests_per_s": round(len(good_records) / elapsed, 2),
      "texts_per_s": round(len(good_records) * args.texts_per_request / elapsed, 2),
      "mentions_per_s": round(sum(r[4] for r in good_records) / elapsed, 2),
      "latency_ms_p50": pct(0.50) if latencies else None,
      "latency_ms_p99": pct(0.99) if latencies else None,
      "malformed_requests": sum(r[0] != "good" for r in records),
      "statuses": dict(sorted(statuses.items())),
      "errors": sum(not r[2] for r in records),
      "errors_5xx": sum(isinstance(r[1], int) and r[1] >= 500 for r in records),
      "errors_by_kind": _errors_by_kind(records),
      "batches": batches,
      "texts_per_batch_mean": round((after["items"] - before["items"]) / max(batches, 1), 2),
      "server_rss_mb": {"ready": None, "start": rss_start, "end": rss_end,
                        "max": max(rss_samples + [rss_start, rss_end]),
                        # One sample per tenth of the run: flat memory shows here.
                        "by_tenth": rss_samples[::max(1, len(rss_samples) // 10)]},
      "server_cpu_cores": round((srv1 - srv0) / elapsed, 2),
      "mentions_per_server_cpu_s": round(sum(r[4] for r in good_records)
                                         / max(srv1 - srv0, 1e-9), 2),
      "client_cpu_cores": round((own1 - own0) / elapsed, 2),
      "other_load_cores": round(max(0.0, (cpu1 - cpu0) - (srv1 - srv0) - (own1 - own0))
                                / elapsed, 2),
  }


def _errors_by_kind(records) -> dict:
  out: dict[str, int] = {}
  for kind, status, expected, _, _ in records:
    if not expected:
      out[f"{kind}:{status}"] = out.get(f"{kind}:{status}", 0) + 1
  return out


def main() -> None:
  args = _parse_args()
  requests = _requests(_texts(args.workdir), args.texts_per_request)
  started = time.perf_counter()
  library = _library(args, requests)
  gc.collect()  # The library's linker is done with; its memory is not the server's.
  library_s = time.perf_counter() - started
  import jax  # pylint: disable=g-import-not-at-top  (imported by the library already)

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = os.path.join("/tmp", f"bench_serve_{port}.log")
  with open(log_path, "wb") as log:
    proc = _start_server(args, port, log)
    try:
      ready_s = asyncio.run(_wait_ready(url, proc, args.ready_timeout))
      rss_ready = _rss_mb(proc.pid)
      server = asyncio.run(_load(args, url, proc.pid, requests))
      server["server_rss_mb"]["ready"] = rss_ready
      alive = proc.poll() is None
    finally:
      proc.terminate()
      try:
        proc.wait(30)
      except subprocess.TimeoutExpired:
        proc.kill()
  ratio = lambda ref: round(server["mentions_per_s"] / max(ref["mentions_per_s"], 1e-9), 2)
  # Per CPU second: the load of other processes changes between the library's
  # run and the server's, and this ratio is the one it moves least.
  cpu_ratio = lambda ref: round(server["mentions_per_server_cpu_s"]
                                / max(ref["mentions_per_cpu_s"], 1e-9), 2)
  print(json.dumps({
      "bench": "serve",
      "server": server,
      "server_alive_at_end": alive,
      "library": library,
      "server_over_library_per_request": ratio(library["per_request"]),
      "server_over_library_batched": ratio(library["batched"]),
      "per_cpu_s_server_over_library_per_request": cpu_ratio(library["per_request"]),
      "per_cpu_s_server_over_library_batched": cpu_ratio(library["batched"]),
      "clients": args.clients,
      "texts_per_request": args.texts_per_request,
      "malformed_share": args.malformed,
      "mode": args.mode,
      "top_k": args.top_k,
      "server_settings": {"max_wait_ms": args.max_wait_ms, "max_batch": args.max_batch,
                          "max_body_bytes": args.max_body_bytes,
                          "window_batch": args.window_batch or "server default",
                          "mention_batch": args.mention_batch or "server default",
                          "pair_batch": args.pair_batch or "server default"},
      "documents": len(_texts(args.workdir)),
      "chars_per_doc_mean": round(statistics.mean(map(len, _texts(args.workdir))), 1),
      "workdir": os.path.abspath(args.workdir),
      "setup_s": {"library": round(library_s, 1), "server_ready": round(ready_s, 1)},
      "server_log": log_path,
      "threads": len(os.sched_getaffinity(0)),
      "cpu_count": os.cpu_count(),
      "platform": jax.devices()[0].platform,
      "machine": f"{platform.system()} {platform.machine()}",
      "jax": jax.__version__,
  }))


if __name__ == "__main__":
  main()
