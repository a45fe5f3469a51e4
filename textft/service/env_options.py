"""Command-line options the environment can set too, as containers and process managers configure a
service: ``--broker`` reads ``TEXTFT_BROKER``, ``--data-dir`` ``TEXTFT_DATA_DIR``, and so on.

A flag wins over the environment, the environment over the built-in default. ``--help`` names each
option's variable, and a bad value is reported with the name of the variable it came from.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

from textft.service.textft_api import UserError, closest

PREFIX = "TEXTFT_"


def yes_no(value: str) -> bool:
    """An on/off option's value: 1/true/yes/on or 0/false/no/off."""
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


KINDS = {int: "a whole number", float: "a number", yes_no: "yes or no (1/true/on, 0/false/off)"}


def variable(flag: str) -> str:
    """``--max-upload-mb`` → ``TEXTFT_MAX_UPLOAD_MB``."""
    return PREFIX + flag.lstrip("-").replace("-", "_").upper()


@dataclass
class FromEnv:
    variable: str
    raw: str
    convert: Callable[[str], Any]
    choices: tuple | None
    many: bool
    default: Any


class EnvParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``option`` reads ``TEXTFT_<OPTION>`` when the flag is not given."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", f"Each option can also be set in the environment, named as shown ({PREFIX}"
                                    f"DATA_DIR for --data-dir; lists separated by '{os.pathsep}'); a flag wins over"
                                    " the environment.")
        super().__init__(*args, **kwargs)
        self.from_env: dict[str, FromEnv] = {}
        self.required_options: list[str] = []

    def option(self, flag: str, *, type: Callable[[str], Any] = str, default: Any = None, choices=None,
               many: bool = False, required: bool = False, help: str = "", **kwargs) -> None:
        """``add_argument`` for an option the environment may set; ``many``: a list (``append`` or ``nargs``)."""
        name = variable(flag)
        dest = flag.lstrip("-").replace("-", "_")
        raw = os.environ.get(name, "").strip()
        if raw:
            self.from_env[dest] = FromEnv(name, raw, type, tuple(choices) if choices else None, many, default)
            default = None  # None after parsing: no flag given, the environment's value applies
        if required:
            self.required_options.append(dest)
        self.add_argument(flag, type=type, default=default, choices=choices, help=f"{help} [env {name}]", **kwargs)

    def parse(self, argv: list[str], check: Callable[[argparse.Namespace, dict[str, str]], list[str]] | None = None
              ) -> tuple[argparse.Namespace, dict[str, str]]:
        """The options, and the variable each option set from the environment came from. Every problem,
        of the environment's values and those ``check`` finds, is reported at once."""
        args = self.parse_args(argv)
        sources: dict[str, str] = {}
        problems: list[str] = []
        for dest, env in self.from_env.items():
            if getattr(args, dest) is not None:
                continue  # the flag was given
            try:
                value = ([env.convert(v) for v in env.raw.split(os.pathsep) if v.strip()] if env.many
                         else env.convert(env.raw))
            except (TypeError, ValueError):
                value = None
                problems.append(f"{env.variable} must be {KINDS.get(env.convert, 'valid')}, got '{env.raw}'")
            if value is not None and env.choices is not None and value not in env.choices:
                value = None
                problems.append(f"{env.variable} must be one of {', '.join(env.choices)}, got '{env.raw}'"
                                f"{closest(env.raw, env.choices)}")
            if value is None:  # checked as the default, so that the other checks stay meaningful
                setattr(args, dest, env.default)
                continue
            setattr(args, dest, value)
            sources[dest] = env.variable
        for dest in self.required_options:
            if getattr(args, dest) in (None, ""):
                problems.append(f"'--{dest.replace('_', '-')}' is required (or set {variable(dest)})")
        if check is not None:
            problems += check(args, sources)
        if problems:
            raise UserError(problems)
        return args, sources


def label(dest: str, sources: dict[str, str]) -> str:
    """How a message names an option: its variable when the environment set it, else its flag."""
    return sources.get(dest) or f"'--{dest.replace('_', '-')}'"
