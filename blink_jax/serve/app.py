"""The HTTP service: routes over one Linker, loaded once, called by one batching worker.

  POST /link           texts -> each text's linked spans
  POST /disambiguate   spans the caller has -> their entities
  GET  /healthz        the process answers (at once, even while loading)
  GET  /readyz         200 once the model and index are loaded and compiled, else 503
  GET  /docs           OpenAPI (Swagger UI); the schema at /openapi.json

The linker loads in a background thread at start-up, so /healthz answers
while it loads; until it is ready, /link and /disambiguate answer 503. Every
error is a JSON `{"error": ..., "detail": [...]}` (`errors.py`).

No `from __future__ import annotations` here: FastAPI reads the route
signatures' types at run time, and the request models are local classes.
"""

import asyncio
import dataclasses
import threading
from collections.abc import Hashable
from typing import Any

import fastapi
from absl import logging
from fastapi.responses import JSONResponse

from blink_jax import workdir as workdir_lib
from blink_jax.inference import linker as linker_lib
from blink_jax.serve import batching
from blink_jax.serve import body_limit
from blink_jax.serve import errors
from blink_jax.serve import schemas


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the service runs (the `python -m blink_jax.serve` flags)."""
  workdir: str
  entities: str | None = None      # A catalogue jsonl instead of the training one.
  mode: str = "fast"               # Requests' default mode.
  full_mode: bool = True           # Load the cross-encoder so requests may ask for "full".
  warm_up: bool = True             # Compile every batch shape before reporting ready.
  max_wait_ms: float = 5.0         # How long a request waits for others to batch with.
  max_batch: int = 32              # Texts (or mentions) per model call, at most.
  # Config overrides for Linker.load, e.g. {"linker.batch_size": 16}: the rows
  # the model functions see per call (`__main__` sets them for CPUs).
  overrides: dict = dataclasses.field(default_factory=dict)
  limits: schemas.Limits = schemas.Limits()


class Service:
  """The linker behind the routes. Only the batcher's worker thread calls it."""

  def __init__(self, settings: Settings):
    self.settings = settings
    self.linker: linker_lib.Linker | None = None
    self.modes: tuple[str, ...] = ()
    self.error: str | None = None  # Why loading failed.
    self.full_mode_error: str | None = None  # Why full mode is off, when it is.
    self.batcher = batching.Batcher(self._run, max_wait_s=settings.max_wait_ms / 1000,
                                    max_items=settings.max_batch,
                                    max_queued=settings.limits.max_queued)
    self._loader = threading.Thread(target=self._load, name="load-linker", daemon=True)

  def start(self) -> None:
    self._loader.start()

  @property
  def ready(self) -> bool:
    return self.linker is not None

  def _load(self) -> None:
    s = self.settings
    try:
      linker = linker_lib.Linker.load(s.workdir, mode=s.mode, entities=s.entities,
                                      overrides=s.overrides)
      modes = ["fast"]
      if s.full_mode or s.mode == "full":
        try:
          linker.load_full_mode()
          modes.append("full")
        except (ValueError, workdir_lib.StaleArtifactError) as e:
          if s.mode == "full":
            raise
          self.full_mode_error = str(e)
          logging.warning("Serving fast mode only: %s", e)
      if s.warm_up:
        logging.info("Compiling the linker for every batch shape (%s mode)...",
                     " and ".join(modes))
        linker.warm_up(modes)
      self.modes = tuple(modes)
      self.linker = linker  # Last: from here on the service is ready.
      logging.info("Ready: %s, %d entities, modes %s.", s.workdir, len(linker.index), modes)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Loading the linker from %s failed.", s.workdir)
      self.error = f"{type(e).__name__}: {e}"

  def check(self, mode: str | None, top_k: int) -> str:
    """The request's mode, or an HTTP error when it cannot be served now."""
    if not self.ready:
      raise fastapi.HTTPException(503, self.error and f"The linker failed to load: {self.error}"
                                  or "The linker is still loading; see /readyz.")
    mode = mode or self.settings.mode
    if mode not in self.modes:
      raise errors.invalid(["body", "mode"], f"This server does not link in {mode} mode"
                           + (f": {self.full_mode_error}" if self.full_mode_error else "."))
    most = self.linker.candidate_count(mode)
    if top_k > most:
      raise errors.invalid(["body", "top_k"], f"top_k must be at most {most} in {mode} mode "
                           f"(the candidates the linker ranks), got {top_k}.")
    return mode

  async def submit(self, key: Hashable, items: list, top_k: int) -> Any:
    """The job's result, computed in a batch with whatever else is waiting."""
    try:
      return await asyncio.wrap_future(self.batcher.submit(key, items, top_k=top_k))
    except batching.QueueFull as e:
      raise fastapi.HTTPException(429, str(e), headers={"Retry-After": "1"}) from None
    except batching.Closed as e:
      raise fastapi.HTTPException(503, str(e)) from None
    except ValueError as e:
      # An input the schema let through but the linker refused: the client's to fix.
      logging.warning("Refused a %s request: %s", key[0], e)
      raise errors.invalid(["body"], str(e)) from None

  def _run(self, key: Hashable, jobs: list[batching.Job]) -> list[Any]:
    """One model call for jobs of one kind and mode; each job's slice of the output."""
    kind, mode = key
    items = [x for job in jobs for x in job.items]
    top_k = max(job.options["top_k"] for job in jobs)
    if kind == "link":
      out = self.linker.link(items, mode=mode, top_k=top_k)
    else:
      out = self.linker.disambiguate(items, mode=mode, top_k=top_k)
    results, start = [], 0
    for job in jobs:
      part = out[start:start + len(job.items)]
      start += len(job.items)
      if job.options["top_k"] != top_k:  # The batch's largest: cut to what this job asked.
        part = _with_top_k(part, job.options["top_k"])
      results.append(part)
    return results


def _with_top_k(results: list, top_k: int) -> list:
  """Candidates are best first, so a job's top_k are the first of a larger top_k."""
  if results and isinstance(results[0], list):  # /link: a list of spans per text.
    return [_with_top_k(spans, top_k) for spans in results]
  out = []
  for r in results:
    cut = {key: value for key, value in r.items() if key != "candidates"}
    if top_k:
      cut["candidates"] = r["candidates"][:top_k]
    out.append(cut)
  return out


def create_app(settings: Settings) -> fastapi.FastAPI:
  """The ASGI app; the linker starts loading when the app starts (lifespan)."""
  service = Service(settings)
  limits = settings.limits
  LinkRequest, DisambiguateRequest = schemas.request_models(limits)

  async def lifespan(app: fastapi.FastAPI):
    del app
    service.start()
    yield
    service.batcher.close()

  app = fastapi.FastAPI(
      title="blink_jax", version="0.1.0", lifespan=lifespan,
      description="Entity linking with a trained blink_jax linker: find mentions in text "
                  "and link them to a catalogue of entities, or link spans you have.")
  app.state.service = service
  app.add_middleware(body_limit.BodyLimit, max_bytes=limits.max_body_bytes)
  errors.install(app)
  documented = errors.RESPONSES

  @app.post("/link", response_model=schemas.LinkResponse, responses=documented)
  async def link(request: LinkRequest) -> JSONResponse:
    """Finds the mentions in each text and links them."""
    mode = service.check(request.mode, request.top_k)
    found = await service.submit(("link", mode), request.texts, request.top_k)
    # The library's dicts as they are (results.py), not re-validated: the
    # same JSON as `Linker.link`, and no second pass over every span.
    return JSONResponse({"mode": mode, "results": found})

  @app.post("/disambiguate", response_model=schemas.DisambiguateResponse,
            responses=documented)
  async def disambiguate(request: DisambiguateRequest) -> JSONResponse:
    """Links spans you already have (mention with its left and right context)."""
    mode = service.check(request.mode, request.top_k)
    mentions = [m.model_dump() for m in request.mentions]
    found = await service.submit(("disambiguate", mode), mentions, request.top_k)
    return JSONResponse({"mode": mode, "results": found})

  @app.get("/healthz", response_model=schemas.Health)
  async def healthz() -> dict:
    """The process answers; how much it has linked and how much waits."""
    b = service.batcher
    return {"status": "ok", "ready": service.ready, "batches": b.batches, "items": b.items,
            "queued": b.queued}

  @app.get("/readyz", response_model=schemas.Ready,
           responses={503: {"model": schemas.Ready, "description": "Not ready (yet)."}})
  async def readyz() -> JSONResponse:
    """200 once the model and index are loaded (and compiled), else 503."""
    body = {"ready": service.ready, "error": service.error, "modes": list(service.modes),
            "max_top_k": ({m: service.linker.candidate_count(m) for m in service.modes}
                          if service.ready else {}),
            "limits": dataclasses.asdict(limits)}
    return JSONResponse(body, status_code=200 if service.ready else 503)

  return app

