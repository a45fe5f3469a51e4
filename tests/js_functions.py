"""The functions of a JavaScript module and their lengths, for the architecture test's 80-line rule.

A small tokenizer rather than a JS parser, so the test needs nothing beyond Python: it skips comments,
strings, template literals (their ``${...}`` parts are read as code) and regex literals, so that no
brace inside them is counted, then matches the braces of every ``function`` (declared or in an
expression), every method of a class or object literal, and every arrow function with a block body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# After these words a slash starts a regex literal; after a name, a number or a closing bracket it divides.
REGEX_AFTER_WORDS = {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do",
                     "else", "yield", "await"}
# `word (...) {` is a method only when word is none of these.
NOT_METHODS = {"if", "for", "while", "switch", "catch", "with", "function", "return", "typeof", "await", "new"}
NAME = re.compile(r"[A-Za-z_$][\w$]*")
NUMBER = re.compile(r"\d[\w.]*|\.\d[\w]*")
PUNCTUATORS = ("=>", "...", "?.", "${")


@dataclass(frozen=True)
class Token:
    kind: str  # name, number, string, template, regex, punct
    text: str
    line: int


@dataclass(frozen=True)
class Function:
    name: str
    line: int
    lines: int


def _string_end(source: str, i: int) -> int:
    """The index after the quoted string that starts at ``i``."""
    quote, i = source[i], i + 1
    while source[i] != quote:
        i += 2 if source[i] == "\\" else 1
    return i + 1


def _template_end(source: str, i: int) -> tuple[int, bool]:
    """Scan template text from ``i`` (just after a backtick or the ``}`` of a ``${...}``): the index after
    the closing backtick (True) or after the next ``${`` (False), whose code comes next."""
    while True:
        if source[i] == "\\":
            i += 2
        elif source[i] == "`":
            return i + 1, True
        elif source.startswith("${", i):
            return i + 2, False
        else:
            i += 1


def _regex_end(source: str, i: int) -> int:
    """The index after the regex literal (flags included) that starts at ``i``."""
    i, in_class = i + 1, False
    while in_class or source[i] != "/":
        if source[i] == "\\":
            i += 1
        elif source[i] in "[]":
            in_class = source[i] == "["
        elif source[i] == "\n":
            raise SyntaxError("unterminated regex literal")
        i += 1
    return NAME.match(source, i + 1).end() if NAME.match(source, i + 1) else i + 1


def _regex_allowed(previous: Token | None) -> bool:
    if previous is None:
        return True
    if previous.kind == "punct":
        return previous.text not in (")", "]", "}")
    return previous.kind == "name" and previous.text in REGEX_AFTER_WORDS


def tokenize(source: str) -> list[Token]:
    """The code tokens of ``source``; a string, template text or regex is one token, comments none."""
    out: list[Token] = []
    template_braces: list[bool] = []  # per open brace: True when it is the `${` of a template literal
    i, line = 0, 1

    def add(kind: str, end: int) -> int:
        nonlocal line
        out.append(Token(kind, source[i:end], line))
        line += source.count("\n", i, end)
        return end

    while i < len(source):
        c = source[i]
        if c.isspace():
            line += c == "\n"
            i += 1
        elif source.startswith("//", i):
            i = source.find("\n", i) if "\n" in source[i:] else len(source)
        elif source.startswith("/*", i):
            end = source.index("*/", i + 2) + 2
            line += source.count("\n", i, end)
            i = end
        elif c in "'\"":
            i = add("string", _string_end(source, i))
        elif c == "`" or (c == "}" and template_braces and template_braces[-1]):
            if c == "}":
                template_braces.pop()
                i = add("punct", i + 1)
            end, closed = _template_end(source, i + (c == "`"))
            if not closed:
                template_braces.append(True)
            i = add("template" if closed else "punct", end)  # an unclosed part ends in `${`, an opener
        elif c == "/" and _regex_allowed(out[-1] if out else None):
            i = add("regex", _regex_end(source, i))
        elif m := NAME.match(source, i) or NUMBER.match(source, i):
            i = add("name" if m.re is NAME else "number", m.end())
        else:
            size = next((len(p) for p in PUNCTUATORS if source.startswith(p, i)), 1)
            if c == "{":
                template_braces.append(False)
            elif c == "}" and template_braces:
                template_braces.pop()
            i = add("punct", i + size)
    return out


def _matches(tokens: list[Token]) -> dict[int, int]:
    """Index of each opening bracket's closing one (a template part ending in `${` opens a brace)."""
    pairs, stack = {}, []
    for k, t in enumerate(tokens):
        if t.kind == "punct" and (t.text in ("(", "[", "{") or t.text.endswith("${")):
            stack.append(k)
        elif t.kind == "punct" and t.text in (")", "]", "}"):
            pairs[stack.pop()] = k
    return pairs


def functions(source: str) -> list[Function]:
    """Every function of ``source`` with a block body, outer before inner, with its length in lines
    from its first line (``function``, the method name or the arrow's parameters) to its closing brace."""
    tokens = tokenize(source)
    pairs = _matches(tokens)
    opener = {close: open_ for open_, close in pairs.items()}
    text = lambda k: tokens[k].text if 0 <= k < len(tokens) else ""  # noqa: E731
    found = []
    for k, t in enumerate(tokens):
        start = body = None
        name = "<anonymous>"
        if t.kind == "name" and t.text == "function":
            j = k + 1 + (text(k + 1) == "*")
            if tokens[j].kind == "name":
                name, j = tokens[j].text, j + 1
            start, body = k, pairs[j] + 1
        elif t.text == "=>" and text(k + 1) == "{":
            start, body = (opener[k - 1] if text(k - 1) == ")" else k - 1), k + 1
        elif t.kind == "name" and t.text not in NOT_METHODS and text(k + 1) == "(" \
                and text(k - 1) not in (".", "?.", "function") and text(pairs[k + 1] + 1) == "{":
            name, start, body = t.text, k, pairs[k + 1] + 1
        if start is None or text(body) != "{":
            continue
        start -= text(start - 1) == "async"
        if name == "<anonymous>" and text(start - 1) in ("=", ":") and start >= 2 \
                and tokens[start - 2].kind in ("name", "string"):
            name = tokens[start - 2].text.strip("'\"")  # const name = (...) => {, key: function () {
        found.append(Function(name, tokens[start].line, tokens[pairs[body]].line - tokens[start].line + 1))
    return found
