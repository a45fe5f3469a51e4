"""The one JSON error of the service API, and the one mapping from a problem's kind to its HTTP status.

Every refusal is ``{"error": "...", "problems": [{"field", "message", "kind"}, ...]}``: ``error``
joins the messages, each problem names the request, form or query field it concerns (None: the
request as a whole) and its kind (``textft.errors.KINDS``). Problems are raised where they are found
(``UserError`` with ``Problem``s); the status comes from the kind of the first one, here and nowhere
else.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from textft.service.textft_api import KINDS, Problem, UserError

STATUS = {"malformed": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409,
          "too_large": 413, "unsupported": 415, "invalid": 422, "quota": 429, "internal": 500, "upstream": 502,
          "unavailable": 503, "interrupted": 503, "storage": 507}
"""HTTP status of each kind of problem."""
KIND_OF_STATUS = {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "invalid",
                  409: "conflict", 413: "too_large", 415: "unsupported", 422: "invalid", 429: "quota", 500: "internal",
                  502: "upstream", 503: "unavailable", 507: "storage"}
"""The kind of an error that arrives as a status alone (the framework's 404 and 405, ``textft serve``'s answers)."""
assert set(STATUS) == set(KINDS), "every kind of problem has its status"


class ProblemOut(BaseModel):
    field: str | None = Field(description="the request field, form field or query parameter it concerns"
                                          " (e.g. overrides.train.lr, text_column); null: the request as a whole")
    message: str
    kind: str = Field(description=f"what kind of problem, which decides the status: {', '.join(KINDS)}")


class ErrorOut(BaseModel):
    """Every error answer of the API."""

    error: str = Field(description="the problems' messages, joined")
    problems: list[ProblemOut] = Field(description="each problem with its field and kind")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorOut, "description": "The request cannot be served as it is: "
            + ", ".join(f"{status} {kind}" for kind, status in STATUS.items() if status < 500)},
    "5XX": {"model": ErrorOut, "description": "The service or a service it relies on failed: "
            + ", ".join(f"{status} {kind}" for kind, status in STATUS.items() if status >= 500)},
}
"""The error answers of every route, for OpenAPI."""
JSON_ERRORS = {status: {"description": r["description"],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
               for status, r in ERROR_RESPONSES.items()}
"""The same, for a route whose answer is not JSON (its errors still are)."""


def status_of(problems: list[Problem]) -> int:
    return STATUS.get(problems[0].kind, 422) if problems else 422


def error_response(problems: list[Problem], headers: dict | None = None, status: int | None = None) -> JSONResponse:
    """The JSON error of ``problems``, with the status of the first one's kind (or ``status``)."""
    body = ErrorOut(error="; ".join(dict.fromkeys(problems)),
                    problems=[ProblemOut(field=p.field, message=str(p), kind=p.kind) for p in problems])
    return JSONResponse(body.model_dump(), status_code=status or status_of(problems), headers=headers)


def refusal(exc: UserError, headers: dict | None = None) -> JSONResponse:
    if exc.kind == "unauthorized":
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return error_response(exc.problems, headers)


def problem_of_status(status: int, message: str) -> Problem:
    return Problem(message, None, KIND_OF_STATUS.get(status, "invalid" if status < 500 else "internal"))
