"""The HTTP service, started for real (`python -m blink_jax.serve` on a localhost
port) on a trained linker, and talked to over HTTP.

The server runs on one CPU device (XLA_FLAGS cleared, as a user runs it), so
its reference, the library's `Linker.link` on the same texts, is computed in
a subprocess with the same devices and settings: the answers must then be
the same numbers, not merely close.
"""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from blink_jax.serve import schemas  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": REPO}
MAX_TEXTS, MAX_CHARS, MAX_BODY = 8, 3000, 1 << 16
# A threshold under every span logit: texts have many spans to compare.
THRESHOLD = -1e9
SERVER_FLAGS = [f"--max_texts={MAX_TEXTS}", f"--max_text_chars={MAX_CHARS}",
                "--max_mentions=8", f"--max_body_bytes={MAX_BODY}", "--max_wait_ms=50",
                "--window_batch=16", "--mention_batch=16", "--pair_batch=32",
                f"--mention_threshold={THRESHOLD}"]
# The same settings for the library reference.
OVERRIDES = {"linker.batch_size": 16, "eval.batch_size": 16, "cross.eval_batch_size": 32,
             "linker.mention_threshold": THRESHOLD}
TEXT = "Later that year, somebody travelled far.\nA second line."
MENTIONS = [{"context_left": "It was said that ", "mention": "Gegwe",
             "context_right": " had always been faithful."},
            {"context_left": "", "mention": "somebody", "context_right": " travelled far."}]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _log_tail(path: str) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()[-4000:]


@pytest.fixture(scope="module")
def server(linker_workdir, tmp_path_factory):
  """(base url, first answers seen while loading, process, log path) of a running server."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log_path = str(tmp_path_factory.mktemp("serve") / "server.log")
  log = open(log_path, "wb")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(
      [sys.executable, "-m", "blink_jax.serve", f"--workdir={linker_workdir}",
       f"--port={port}", *SERVER_FLAGS], cwd=REPO, env=ENV, stdout=log,
      stderr=subprocess.STDOUT)
  first = None
  try:
    with httpx.Client(base_url=url, timeout=60) as client:
      deadline = time.monotonic() + 600
      while time.monotonic() < deadline:
        assert proc.poll() is None, f"The server exited:\n{_log_tail(log_path)}"
        try:
          health = client.get("/healthz")
        except httpx.TransportError:
          time.sleep(0.2)
          continue
        if first is None:  # The first answers: the linker is (almost surely) loading.
          first = {"healthz": health.json(), "readyz": client.get("/readyz"),
                   "link": client.post("/link", json={"texts": [TEXT]})}
        if client.get("/readyz").status_code == 200:
          break
        time.sleep(0.5)
      else:
        pytest.fail(f"Not ready after 600 s:\n{_log_tail(log_path)}")
    yield url, first, proc, log_path
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      code = proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
      code = "killed after 60 s"
    log.close()
  # A clean shutdown: the lifespan ran to its end (closing the batcher), then
  # uvicorn re-raises the SIGTERM it caught, so the process ends by that signal.
  assert code == -signal.SIGTERM, f"Server exit code {code}:\n{_log_tail(log_path)}"
  assert "Application shutdown complete" in _log_tail(log_path)


@pytest.fixture(scope="module")
def client(server):
  with httpx.Client(base_url=server[0], timeout=120) as c:
    yield c


@pytest.fixture(scope="module")
def texts(linker_workdir):
  with open(os.path.join(linker_workdir, "data", "test.docs.jsonl"), encoding="utf-8") as f:
    docs = [json.loads(line)["text"] for line in f][:3]
  return [d[:MAX_CHARS] for d in docs] + [TEXT, ""]


REFERENCE = r"""
import json, sys
from blink_jax.inference.linker import Linker
job = json.load(sys.stdin)
linker = Linker.load(job["workdir"], overrides=job["overrides"])
out = []
for call in job["calls"]:
  fn = linker.link if call["kind"] == "link" else linker.disambiguate
  out.append(fn(call["items"], mode=call["mode"], top_k=call["top_k"]))
print(json.dumps(out))
"""


def _library(workdir: str, calls: list[dict]) -> list:
  """What the library returns for each call, on the server's devices and settings."""
  proc = subprocess.run([sys.executable, "-c", REFERENCE], input=json.dumps(
      {"workdir": workdir, "overrides": OVERRIDES, "calls": calls}), capture_output=True,
                        text=True, env=ENV, cwd=REPO, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


# ---------------------------------------------------------------------- tests
def test_healthz_answers_while_loading_and_readyz_turns_ready(server, client, linker_workdir):
  _, first, _, _ = server
  # Loading (and compiling) takes seconds; the port opens before: /healthz
  # answered at once, /readyz and the routes said "not yet".
  assert first["healthz"]["status"] == "ok" and first["healthz"]["ready"] is False
  assert first["readyz"].status_code == 503 and first["readyz"].json()["ready"] is False
  assert first["link"].status_code == 503
  assert "loading" in first["link"].json()["error"]
  ready = client.get("/readyz")
  assert ready.status_code == 200
  body = schemas.Ready.model_validate(ready.json())
  assert body.ready and body.modes == ["fast", "full"]  # The chain has a cross-encoder.
  config = json.load(open(os.path.join(linker_workdir, "linker", "config.json")))
  assert body.max_top_k == {"fast": config["linker"]["k"], "full": config["cross"]["k"]}
  assert body.limits["max_texts"] == MAX_TEXTS
  assert client.get("/healthz").json()["ready"] is True


def test_answers_equal_the_library(client, linker_workdir, texts):
  calls = [{"kind": "link", "items": texts, "mode": "fast", "top_k": 0},
           {"kind": "link", "items": texts, "mode": "fast", "top_k": 3},
           {"kind": "link", "items": texts[:2], "mode": "full", "top_k": 2},
           {"kind": "disambiguate", "items": MENTIONS, "mode": "fast", "top_k": 2},
           {"kind": "disambiguate", "items": MENTIONS, "mode": "full", "top_k": 0}]
  want = _library(linker_workdir, calls)
  for call, expected in zip(calls, want):
    key = "texts" if call["kind"] == "link" else "mentions"
    r = client.post(f"/{call['kind']}", json={key: call["items"], "mode": call["mode"],
                                               "top_k": call["top_k"]})
    assert r.status_code == 200, r.text
    # One request at a time is one model call over exactly these items, as the
    # library's: the same floats, so plain equality of the parsed JSON.
    assert r.json() == {"mode": call["mode"], "results": expected}
    model = schemas.LinkResponse if call["kind"] == "link" else schemas.DisambiguateResponse
    model.model_validate(r.json())  # The documented schema is what is sent.
  spans = [s for text in want[1] for s in text]
  assert len(spans) > len(texts) and all(len(s["candidates"]) == 3 for s in spans)
  assert want[0][texts.index("")] == []
  assert all("cross_score" in c for text in want[2] for s in text for c in s["candidates"])


def _same_answers(got: list, want: list) -> None:
  """Equal but for the last bits of scores: concurrent requests are batched
  together, and a model call over other rows (another padded shape) rounds
  differently in float32."""
  assert len(got) == len(want)
  for g, w in zip(got, want):
    if isinstance(w, list):
      _same_answers(g, w)
      continue
    assert {k: v for k, v in g.items() if k not in ("score", "bi_score", "cross_score",
                                                     "candidates")} == \
        {k: v for k, v in w.items() if k not in ("score", "bi_score", "cross_score",
                                                 "candidates")}
    for key in ("score", "bi_score", "cross_score"):
      if key in w:
        np.testing.assert_allclose(g[key], w[key], rtol=1e-5, atol=1e-6)
    assert ("candidates" in g) == ("candidates" in w)
    if "candidates" in w:
      _same_answers(g["candidates"], w["candidates"])


def test_concurrent_requests_get_the_sequential_answers(client, server, texts):
  url = server[0]
  requests = [("/link", {"texts": [texts[i % len(texts)], texts[(i + 1) % len(texts)]],
                         "top_k": i % 3})
              for i in range(10)]
  requests += [("/disambiguate", {"mentions": MENTIONS[i % 2:], "top_k": i, "mode": "full"})
               for i in range(3)]
  sequential = [client.post(path, json=body) for path, body in requests]
  assert all(r.status_code == 200 for r in sequential)
  before = client.get("/healthz").json()

  def post(request):
    with httpx.Client(base_url=url, timeout=300) as c:
      return c.post(request[0], json=request[1])

  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    concurrent_answers = list(pool.map(post, requests))
  for seq, conc in zip(sequential, concurrent_answers):
    assert conc.status_code == 200, conc.text
    assert conc.json()["mode"] == seq.json()["mode"]
    _same_answers(conc.json()["results"], seq.json()["results"])
  after = client.get("/healthz").json()
  linked = sum(len(b["texts"] if "texts" in b else b["mentions"]) for _, b in requests)
  assert after["items"] - before["items"] == linked and after["queued"] == 0


BAD = [
    # (what, path, request kwargs, status, where the error points or what it says)
    ("broken JSON", "/link", {"content": b'{"texts": ["a", '}, 422, "JSON decode error"),
    ("not an object", "/link", {"json": ["a"]}, 422, ["body"]),
    ("texts not a list", "/link", {"json": {"texts": "a"}}, 422, ["body", "texts"]),
    ("a text not a string", "/link", {"json": {"texts": ["a", 3]}}, 422, ["body", "texts", 1]),
    ("no texts", "/link", {"json": {"mode": "fast"}}, 422, ["body", "texts"]),
    ("unknown field", "/link", {"json": {"texts": ["a"], "txt": 1}}, 422, ["body", "txt"]),
    ("too many texts", "/link", {"json": {"texts": ["a"] * (MAX_TEXTS + 1)}}, 422,
     ["body", "texts"]),
    ("a text too long", "/link", {"json": {"texts": ["a" * (MAX_CHARS + 1)]}}, 422,
     ["body", "texts", 0]),
    ("lone surrogate", "/link", {"content": b'{"texts": ["\\ud800"]}'}, 422,
     ["body", "texts", 0]),
    ("bad mode", "/link", {"json": {"texts": ["a"], "mode": "fastest"}}, 422, ["body", "mode"]),
    ("top_k a string", "/link", {"json": {"texts": ["a"], "top_k": "2"}}, 422,
     ["body", "top_k"]),
    ("negative top_k", "/link", {"json": {"texts": ["a"], "top_k": -1}}, 422, ["body", "top_k"]),
    ("top_k over the mode's k", "/link", {"json": {"texts": ["a"], "mode": "full",
                                                   "top_k": 1000}}, 422, ["body", "top_k"]),
    ("empty mention", "/disambiguate", {"json": {"mentions": [{"mention": ""}]}}, 422,
     ["body", "mentions", 0, "mention"]),
    ("mention without mention", "/disambiguate",
     {"json": {"mentions": [{"context_left": "a"}]}}, 422, ["body", "mentions", 0, "mention"]),
    ("too many mentions", "/disambiguate", {"json": {"mentions": [{"mention": "a"}] * 9}}, 422,
     ["body", "mentions"]),
    ("not JSON", "/link", {"content": b"texts=a", "headers": {
        "content-type": "application/x-www-form-urlencoded"}}, 422, ["header", "content-type"]),
    ("body over the limit", "/link", {"content": b'{"texts": ["' + b"a" * MAX_BODY + b'"]}'},
     413, "larger than"),
    ("body over the limit, chunked", "/link",
     {"content": iter([b'{"texts": ["', b"a" * MAX_BODY, b'"]}'])}, 413, "larger than"),
    ("JSON nested too deep", "/link", {"content": b"[" * 30_000 + b"]" * 30_000}, 400,
     "parsing the body"),
    ("no such route", "/lnk", {"json": {"texts": ["a"]}}, 404, "No such endpoint"),
]


@pytest.mark.parametrize("what,path,kwargs,status,where", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(client, what, path, kwargs, status,
                                                        where):
  del what
  kwargs = dict(kwargs)
  headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
  r = client.post(path, headers=headers, **kwargs)
  assert r.status_code == status, r.text
  body = schemas.ErrorResponse.model_validate(r.json())
  assert body.error
  if isinstance(where, list):
    assert where in [d.loc for d in body.detail], body
  else:
    assert where in body.error
  assert len(r.content) < 4000  # The input is not echoed back.
  # And the server goes on answering.
  assert client.post("/link", json={"texts": ["a b"]}).status_code == 200


def test_empty_requests_and_other_methods(client):
  assert client.post("/link", json={"texts": []}).json() == {"mode": "fast", "results": []}
  assert client.post("/disambiguate", json={"mentions": []}).json() == {
      "mode": "fast", "results": []}
  r = client.get("/link")
  assert r.status_code == 405 and "GET is not allowed" in r.json()["error"]


def test_openapi_documents_the_service(client):
  spec = client.get("/openapi.json").json()
  assert {"/link", "/disambiguate", "/healthz", "/readyz"} <= set(spec["paths"])
  link = spec["paths"]["/link"]["post"]
  assert {"200", "413", "422", "429", "503"} <= set(link["responses"])
  ref = link["requestBody"]["content"]["application/json"]["schema"]["$ref"]
  request = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
  # The bounds this server enforces, not defaults.
  assert request["properties"]["texts"]["maxItems"] == MAX_TEXTS
  assert request["properties"]["texts"]["items"]["maxLength"] == MAX_CHARS
  docs = client.get("/docs")
  assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_workdir_without_a_linker_is_one_line_before_listening(tmp_path):
  out = subprocess.run([sys.executable, "-m", "blink_jax.serve", f"--workdir={tmp_path}",
                        "--port=1"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1
  assert out.stderr.startswith(f"error: No linker in {tmp_path} ")
  assert len(out.stderr.splitlines()) == 1, out.stderr
