"""Request and response bodies of the HTTP service, with their limits.

Pydantic validates each request before it reaches the model: a wrong type, a
missing or unknown field, a text too long or too many texts is a 422 that
names the field (`errors.py`). The same models are the OpenAPI schema at
/docs. Response fields are those of `inference/results.py`, which the
library builds; `EntityId` comes from there, so string ids change one place.

Request models are made by `request_models(limits)` because their bounds
(max texts, max characters) are server settings, and the schema at /docs
shows the bounds the server enforces.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from blink_jax.inference import linker as linker_lib
from blink_jax.inference import results

Mode = Literal[linker_lib.MODES]


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask for, and how much may wait for the model."""
  max_texts: int = 64              # Texts per /link request.
  max_text_chars: int = 20_000     # Characters per text (~40 windows of 128 pieces).
  max_mentions: int = 256          # Mentions per /disambiguate request.
  max_context_chars: int = 5_000   # Characters per mention or context side.
  max_body_bytes: int = 2 << 20    # Request body; a larger one is a 413.
  max_queued: int = 1024           # Texts + mentions waiting for the model; then 429.


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
  """(LinkRequest, DisambiguateRequest) bounded by `limits`."""
  strict = ConfigDict(strict=True, extra="forbid")  # "3" is not 3; a typo'd key is an error.
  # Strict str also refuses a lone surrogate ("\ud800" in JSON), which no
  # tokenizer could encode.
  text = Annotated[str, Field(max_length=limits.max_text_chars)]
  context = Annotated[str, Field(max_length=limits.max_context_chars)]
  # Not named `mode` / `top_k`: a class body that assigns a name does not see
  # the enclosing function's variable of that name.
  top_k_field = Field(0, ge=0, description="Also return each span's best top_k candidates with "
                "their scores (at most the mode's candidate count, see /readyz).")
  mode_field = Field(None, description="fast: bi-encoder; full: re-ranked by the cross-encoder. "
               "Default: the server's --mode.")

  class LinkRequest(BaseModel):
    """Texts whose mentions the linker finds and links."""
    model_config = ConfigDict(**strict, json_schema_extra={"examples": [
        {"texts": ["Later that year, Gegwe was often seen near the river."], "top_k": 3}]})
    texts: list[text] = Field(max_length=limits.max_texts,
                              description=f"At most {limits.max_texts} texts of at most "
                              f"{limits.max_text_chars} characters each.")
    mode: Mode | None = mode_field
    top_k: int = top_k_field

  class MentionIn(BaseModel):
    """A span the caller already has, in BLINK's mention format."""
    model_config = strict
    context_left: context = ""
    mention: Annotated[str, Field(min_length=1, max_length=limits.max_context_chars)]
    context_right: context = ""

  class DisambiguateRequest(BaseModel):
    """Spans to link: each mention with the text on its left and right."""
    model_config = ConfigDict(**strict, json_schema_extra={"examples": [
        {"mentions": [{"context_left": "Later that year, ", "mention": "Gegwe",
                       "context_right": " was often seen near the river."}]}]})
    mentions: list[MentionIn] = Field(max_length=limits.max_mentions,
                                      description=f"At most {limits.max_mentions} mentions.")
    mode: Mode | None = mode_field
    top_k: int = top_k_field

  return LinkRequest, DisambiguateRequest


# ------------------------------------------------------------------ responses
# The routes return the library's dicts unvalidated (app.py); tests validate
# answers against these models, and a field they do not declare is an error,
# so the documented schema cannot drift from what the server sends.
_EXACT = ConfigDict(extra="forbid")

class Candidate(BaseModel):
  """One of a span's top-k candidates (`results.candidate`)."""
  model_config = _EXACT
  entity_id: results.EntityId
  title: str | None
  url: str | None = Field(None, description="The catalogue's url, when it has one.")
  score: float = Field(description="Probability among the mode's candidates.")
  bi_score: float | None = Field(description="Bi-encoder dot product (null: a lexical-only "
                                 "candidate of hybrid retrieval).")
  cross_score: float | None = Field(None, description="Cross-encoder logit (full mode).")


class Disambiguated(BaseModel):
  """A linked span (`results.span`); `nil`: the best candidate is not confident enough."""
  model_config = _EXACT
  mention: str
  entity_id: results.EntityId
  title: str | None
  url: str | None = Field(None, description="The catalogue's url, when it has one.")
  score: float = Field(description="The best candidate's probability among the mode's "
                       "candidates.")
  nil: bool
  candidates: list[Candidate] | None = Field(None, description="With top_k > 0.")


class Linked(Disambiguated):
  """A span found in a text; start/end are character offsets, end exclusive."""
  start: int
  end: int


class LinkResponse(BaseModel):
  model_config = _EXACT
  mode: Mode
  results: list[list[Linked]] = Field(description="Each text's spans, in text order.")


class DisambiguateResponse(BaseModel):
  model_config = _EXACT
  mode: Mode
  results: list[Disambiguated] = Field(description="One per mention, in order.")


class ErrorDetail(BaseModel):
  loc: list[str | int] = Field(description="Where: e.g. [\"body\", \"texts\", 3].")
  msg: str
  type: str


class ErrorResponse(BaseModel):
  """Every 4xx/5xx body."""
  error: str = Field(description="What is wrong, in one line.")
  detail: list[ErrorDetail] = Field(default_factory=list)


class Health(BaseModel):
  status: Literal["ok"]
  ready: bool
  batches: int = Field(description="Model calls so far.")
  items: int = Field(description="Texts and mentions they linked.")
  queued: int = Field(description="Texts and mentions waiting for the model now.")


class Ready(BaseModel):
  ready: bool
  error: str | None = Field(None, description="Why loading failed, if it did.")
  modes: list[Mode] = Field(default_factory=list, description="Modes this server links in.")
  max_top_k: dict[str, int] = Field(default_factory=dict, description="Per mode.")
  limits: dict[str, int] = Field(default_factory=dict)
