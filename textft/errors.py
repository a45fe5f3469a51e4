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


MAX_ROWS_SHOWN = 5


def row_list(indices: list[int]) -> str:
    """``rows 3, 7 and 12 more`` for 0-based indices (shown 1-based, as a spreadsheet counts data rows)."""
    shown = ", ".join(str(i + 1) for i in indices[:MAX_ROWS_SHOWN])
    more = f" and {len(indices) - MAX_ROWS_SHOWN} more" if len(indices) > MAX_ROWS_SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"
