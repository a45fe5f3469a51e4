"""The config keys as ``textft train --help`` lists them: each key, its default and its docstring."""

from __future__ import annotations

import ast
import dataclasses
import inspect

from textft.config import SECTION_TYPES


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass, for ``textft train --help``."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_keys() -> str:
    lines = []
    for section, cls in SECTION_TYPES.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"  {section}.{f.name} (default: {default!r})\n      {docs.get(f.name, '')}")
    return "\n".join(lines)
