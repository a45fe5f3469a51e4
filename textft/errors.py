"""The one kind of error a user sees, and the helpers that make its messages precise.

A problem is data: its message, the field it concerns (a config key such as ``train.lr``, a request
field, a form field) and its kind, all set where it is raised. The CLI prints the messages; the
service answers with the status of the kind (one mapping, in ``textft.service.errors``) and lists
each problem with its field, so nothing is ever recovered by reading a message back.
"""

from __future__ import annotations

import difflib
from typing import Iterable

KINDS = ("invalid", "malformed", "unsupported", "not_found", "conflict", "too_large", "quota", "unavailable",
         "unauthorized", "forbidden", "upstream", "storage", "interrupted", "internal")
"""What went wrong, by what the user can do about it: fix the input (invalid), send something that
parses (malformed) or of a supported type (unsupported), name something that exists (not_found),
wait or undo something (conflict), send less (too_large), wait for the limit (quota), try later
(unavailable), send a valid key (unauthorized) or use one allowed to do it (forbidden); or nothing,
because a service this one relies on failed (upstream), the disk is full (storage), the run was
stopped (interrupted) or textft itself failed (internal)."""


class Problem(str):
    """One problem: its message (a Problem is the string of its message, so lists of problems read as
    lists of messages), the field it concerns (None: the request or file as a whole) and its kind."""

    field: str | None
    kind: str

    def __new__(cls, message: str, field: str | None = None, kind: str = "invalid") -> "Problem":
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; kinds: {', '.join(KINDS)}")
        self = super().__new__(cls, message)
        self.field, self.kind = field, kind
        return self

    @property
    def message(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Problem({str(self)!r}, field={self.field!r}, kind={self.kind!r})"

    def __reduce__(self):
        return Problem, (str(self), self.field, self.kind)

    def to_dict(self) -> dict:
        return {"field": self.field, "message": str(self), "kind": self.kind}


class UserError(ValueError):
    """A problem with what the user asked for; the CLI prints it without a traceback.

    ``problems`` are ``Problem``s (strings of their messages, with a field and a kind); a plain
    message takes ``field`` and ``kind`` from the arguments, a Problem keeps its own.
    """

    def __init__(self, problems: str | Iterable[str], field: str | None = None, kind: str = "invalid"):
        given = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [p if isinstance(p, Problem) else Problem(str(p), field, kind) for p in given]
        super().__init__("\n".join(self.problems))

    @property
    def items(self) -> list[Problem]:
        return self.problems

    @property
    def kind(self) -> str:
        """The kind of the error as a whole: its first problem's."""
        return self.problems[0].kind if self.problems else "invalid"


def renamed(problems: list[Problem], names: dict[str, str]) -> list[Problem]:
    """Problems about config keys said in another command's terms (``{"data.test_file": "--data"}``):
    the field, and the key as the message quotes it."""
    out = []
    for p in problems:
        message = p.message
        for old, new in names.items():
            message = message.replace(f"'{old}'", f"'{new}'")
        out.append(Problem(message, names.get(p.field, p.field), p.kind))
    return out


def closest(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the nearest valid choice, or an empty string."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """A library's error message on one line, shortened: it goes inside a sentence of ours."""
    return " ".join(str(e).split())[:limit]


MAX_ROWS_SHOWN = 5


def row_list(indices: list[int]) -> str:
    """``rows 3, 7 and 12 more`` for 0-based indices (shown 1-based, as a spreadsheet counts data rows)."""
    shown = ", ".join(str(i + 1) for i in indices[:MAX_ROWS_SHOWN])
    more = f" and {len(indices) - MAX_ROWS_SHOWN} more" if len(indices) > MAX_ROWS_SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"
