"""The one kind of error a user sees, and the helpers that make its messages precise."""

from __future__ import annotations

import difflib


class UserError(ValueError):
    """A problem with what the user asked for; the CLI prints it without a traceback."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def closest(name: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the nearest valid choice, or an empty string."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """A library's error message on one line, shortened: it goes inside a sentence of ours."""
    return " ".join(str(e).split())[:limit]
