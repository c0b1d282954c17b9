"""Every error the service returns is JSON: {"error": one line, "detail": [{loc, msg, type}]}.

A client learns what was wrong from the answer: `error` says it in a line,
`detail` lists each problem with where it is (`loc`, e.g. ["body", "texts",
3]). Inputs are never echoed back (a 20,000-character text would come back
inside its own error). Nothing a request sends is a 500: a 500 is the
service's own bug, logged with its traceback, and the server goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastapi
from absl import logging
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from blink_jax.serve import schemas

# What the routes document besides their 200 (OpenAPI at /docs).
RESPONSES = {
    413: {"model": schemas.ErrorResponse, "description": "The request body is too large."},
    422: {"model": schemas.ErrorResponse,
          "description": "The request is not valid: the detail names each field."},
    429: {"model": schemas.ErrorResponse,
          "description": "Too much work is waiting; retry after Retry-After seconds."},
    503: {"model": schemas.ErrorResponse, "description": "The linker is not loaded (yet)."},
}


def invalid(loc: Sequence[str | int], msg: str) -> RequestValidationError:
  """A 422 for a value the schema alone cannot judge (e.g. top_k vs the mode's k)."""
  return RequestValidationError([{"type": "value_error", "loc": tuple(loc), "msg": msg}])


def _detail(err: dict) -> dict:
  loc = [x if isinstance(x, int) else str(x) for x in err.get("loc", ())]
  msg = str(err.get("msg", ""))
  ctx = err.get("ctx") or {}
  if err.get("type") == "json_invalid":  # FastAPI puts the parser's reason in ctx.
    msg = f"{msg}: {ctx.get('error', 'invalid JSON')} (character {loc[-1] if loc else '?'})"
  return {"loc": loc, "msg": msg, "type": str(err.get("type", "value_error"))}


def _body(error: str, detail: list[dict] | None = None) -> dict:
  return {"error": error, "detail": detail or []}


def _is_json(request: fastapi.Request) -> bool:
  kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
  return kind == "application/json" or kind.endswith("+json")


def install(app: fastapi.FastAPI) -> None:
  """Registers the handlers that make every error JSON."""

  @app.exception_handler(RequestValidationError)
  async def validation_error(request: fastapi.Request, exc: RequestValidationError):
    detail = [_detail(e) for e in exc.errors()]
    if not _is_json(request) and request.method == "POST":
      # FastAPI parses only JSON bodies; another type reaches the model as
      # bytes, and "Input should be a valid dictionary" would not say why.
      detail.insert(0, {"loc": ["header", "content-type"], "type": "content_type",
                        "msg": "The body must be JSON, sent with content-type: "
                               "application/json"})
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(map(str, first["loc"]))
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return JSONResponse(_body(f"Invalid request: {where}: {first['msg']}{more}", detail),
                        status_code=422)

  @app.exception_handler(HTTPException)
  async def http_error(request: fastapi.Request, exc: HTTPException):
    if exc.status_code == 404:
      error = f"No such endpoint: {request.url.path} (see /docs)."
    elif exc.status_code == 405:
      error = f"{request.method} is not allowed on {request.url.path} (see /docs)."
    else:
      error = str(exc.detail)
    return JSONResponse(_body(error), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))

  @app.exception_handler(Exception)
  async def internal_error(request: fastapi.Request, exc: Exception):
    logging.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(_body(f"Internal error ({type(exc).__name__}); the server's log has "
                              "the traceback."), status_code=500)
