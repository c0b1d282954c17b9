"""A request body larger than the limit is a 413 with a JSON error, read no further.

Starlette's own limit (FastAPI's `max_body_size`) answers a declared
Content-Length over the limit in plain text; every error of this service is
JSON (`errors.py`), hence this small ASGI middleware. A declared length over
the limit is refused before the body is read; a body sent without one
(chunked) is counted as the route reads it, and refused once it passes the
limit, so a client cannot make the server buffer more than the limit either way.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
  """ASGI middleware: request bodies of at most `max_bytes`."""

  def __init__(self, app: ASGIApp, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  def _message(self) -> str:
    return f"The request body is larger than {self.max_bytes} bytes."

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return
    declared = dict(scope["headers"]).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
      body = json.dumps({"error": self._message(), "detail": []},
                        separators=(",", ":")).encode()  # As FastAPI's JSON responses.
      await send({"type": "http.response.start", "status": 413,
                  "headers": [(b"content-type", b"application/json"),
                              (b"content-length", str(len(body)).encode()),
                              (b"connection", b"close")]})
      await send({"type": "http.response.body", "body": body})
      return
    received = 0

    async def counted() -> Message:
      nonlocal received
      message = await receive()
      if message["type"] == "http.request":
        received += len(message.get("body", b""))
        if received > self.max_bytes:
          # FastAPI re-raises an HTTPException met while reading the body, so
          # the app's handler (errors.py) answers it as JSON.
          raise HTTPException(413, self._message())
      return message

    await self.app(scope, counted, send)
