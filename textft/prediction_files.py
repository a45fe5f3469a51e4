"""Texts to classify in, predictions out: csv / tsv / jsonl / parquet / plain text read lazily in
bounded memory, each row checked as it comes, and predictions written through the atomic writer."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from textft.errors import UserError, closest, one_line
from textft.files import replace_problem, staged
from textft.texts import text_problem

INPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet", ".txt": "txt", ".text": "txt"}
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
DEFAULT_MAX_CHARS = 1_000_000


# --- streaming input -----------------------------------------------------------------------------


@dataclass
class Row:
    number: int
    """1-based row (data rows for csv/jsonl/parquet, lines for plain text)."""
    text: str
    id: Any = None
    label: Any = None
    text_pair: str | None = None


def input_format(path: str, requested: str | None) -> str:
    if requested:
        return requested
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise UserError(f"'--input': cannot tell the format of '{path}' from its extension '{suffix}'; use one of"
                        f" {', '.join(INPUT_FORMATS)}{closest(suffix, INPUT_FORMATS)} or pass --input-format")
    return INPUT_FORMATS[suffix]


class InputReader:
    """Rows of a csv / tsv / jsonl / parquet / plain-text file (or stdin), read lazily.

    Only the current line is held in memory, and a line longer than ``max_chars`` is refused
    before it is read whole, so any file size runs in bounded memory. The first row is read and
    checked on construction, so a wrong column or an empty file is reported before a model loads.
    """

    def __init__(self, path: str, fmt: str | None = None, text_column: str = "text", id_column: str | None = None,
                 label_column: str | None = None, max_chars: int = DEFAULT_MAX_CHARS, pair_column: str | None = None):
        self.path, self.fmt = path, input_format(path, fmt)
        self.text_column, self.id_column, self.label_column = text_column, id_column, label_column
        self.pair_column = pair_column
        if pair_column is not None and self.fmt == "txt":
            raise UserError("'--text-pair-column': plain text has one text per line; pairs need csv, tsv, jsonl"
                            " or parquet")
        self.max_chars = max_chars
        self.name = "stdin" if path == "-" else f"'{path}'"
        self.size = None
        if path != "-":
            p = Path(path)
            if not p.exists():
                raise UserError(f"'--input': file '{path}' does not exist")
            if not p.is_file():
                raise UserError(f"'--input': '{path}' is not a file")
            self.size = p.stat().st_size
            if self.size == 0:
                raise UserError(f"'--input': '{path}' is empty")
        elif self.fmt == "parquet":
            raise UserError("'--input': parquet cannot be read from stdin; pass a file")
        self.bytes_read = 0
        self._stream = None
        self._rows = self._parse()
        try:
            self._first = next(self._rows)
        except StopIteration:
            self.close()
            raise UserError(f"'--input': {self.name} holds no texts") from None

    # lines of bytes → str, with line numbers, UTF-8 checks and the length limit
    def _lines(self) -> Iterator[tuple[int, str]]:
        self._stream = sys.stdin.buffer if self.path == "-" else open(self.path, "rb")
        # Valid UTF-8 needs at most 4 bytes a character, so this many bytes always hold a legal line.
        limit = 4 * self.max_chars + 2
        number = 0
        while True:
            line = self._stream.readline(limit + 1)
            if not line:
                return
            number += 1
            self.bytes_read += len(line)
            if len(line) > limit or (len(line) == limit + 1 and not line.endswith(b"\n")):
                raise UserError(f"'--input': line {number} of {self.name} is longer than the {self.max_chars:,}"
                                " characters allowed per text (--max-chars); is this really one text per line?")
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # byte-order mark from Windows editors
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"'--input': line {number} of {self.name} is not valid UTF-8 (byte"
                                f" 0x{line[e.start]:02x} at position {e.start + 1}); convert the file to UTF-8,"
                                " e.g. iconv -f latin1 -t utf-8") from None
            yield number, text

    def _too_long(self, where: str, text: str) -> None:
        if len(text) > self.max_chars:
            raise UserError(f"'--input': {where} of {self.name} has {len(text):,} characters, more than the"
                            f" {self.max_chars:,} allowed per text (--max-chars)")

    def _parse(self) -> Iterator[Row]:
        if self.fmt == "txt":
            for number, line in self._lines():
                text = line.rstrip("\r\n")
                if text.strip():  # blank lines carry no text; line numbers keep the alignment
                    self._too_long(f"line {number}", text)
                    if problem := text_problem(text):
                        raise UserError(f"'--input': line {number} of {self.name}: {problem}")
                    yield Row(number, text)
        elif self.fmt == "jsonl":
            yield from self._parse_jsonl()
        elif self.fmt in ("csv", "tsv"):
            yield from self._parse_csv()
        elif self.fmt == "parquet":
            yield from self._parse_parquet()
        else:
            raise UserError(f"'--input-format' must be one of csv, tsv, jsonl, parquet, txt; got '{self.fmt}'"
                            f"{closest(self.fmt, ['csv', 'tsv', 'jsonl', 'parquet', 'txt'])}")

    def _check_columns(self, found: list[str], where: str) -> None:
        problems = []
        for flag, col in (("--text-column", self.text_column), ("--text-pair-column", self.pair_column),
                          ("--id-column", self.id_column), ("--label-column", self.label_column)):
            if col is not None and col not in found:
                problems.append(f"'{flag}': column '{col}' not found in {where} of {self.name}; columns found:"
                                f" {', '.join(map(str, found)) or 'none'}{closest(col, found)}")
        if problems:
            raise UserError(problems)

    def _text(self, where: str, values: dict, column: str) -> str:
        text = values.get(column)
        if isinstance(text, float) and math.isnan(text):
            text = None  # NaN is how JSON writers and pandas spell a missing value, never the text "nan"
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str) or not text.strip():
            what = "missing" if text is None else "empty" if isinstance(text, str) else f"a {type(text).__name__}"
            raise UserError(f"'--input': {where} of {self.name} has {what} text in column '{column}';"
                            " every row needs a text")
        if problem := text_problem(text):
            raise UserError(f"'--input': {where} of {self.name}, column '{column}': {problem}")
        self._too_long(where, text)
        return text

    def _row(self, number: int, where: str, values: dict) -> Row:
        text = self._text(where, values, self.text_column)
        pair = self._text(where, values, self.pair_column) if self.pair_column else None
        return Row(number, text, values.get(self.id_column) if self.id_column else None,
                   values.get(self.label_column) if self.label_column else None, pair)

    def _parse_jsonl(self) -> Iterator[Row]:
        number = 0
        for line_no, line in self._lines():
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UserError(f"'--input': {where} of {self.name} is not valid JSON ({one_line(e, 120)});"
                                " expected one JSON object per line (JSON Lines)") from None
            if not isinstance(obj, dict):
                raise UserError(f"'--input': {where} of {self.name} is a JSON {type(obj).__name__}, not an object;"
                                " expected one JSON object per line (JSON Lines)")
            number += 1
            self._check_columns(list(obj), where)
            yield self._row(number, where, obj)

    def _parse_csv(self) -> Iterator[Row]:
        csv.field_size_limit(max(self.max_chars + 1, 131072))
        lines = (text for _, text in self._lines())
        reader = csv.reader(lines, delimiter="\t" if self.fmt == "tsv" else ",")
        try:
            header = next(reader, None)
            if header is None:
                return
            self._check_columns(header, "the header")
            for number, values in enumerate(reader, 1):
                if not values:
                    continue
                where = f"row {number} (line {reader.line_num})"
                if len(values) != len(header):
                    raise UserError(f"'--input': {where} of {self.name} has {len(values)} fields, the header"
                                    f" {len(header)}; check the quoting")
                yield self._row(number, where, dict(zip(header, values)))
        except csv.Error as e:
            raise UserError(f"'--input': line {reader.line_num} of {self.name} is not valid"
                            f" {self.fmt.upper()}: {one_line(e, 120)}") from None

    def _parse_parquet(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for one cause: not a parquet file
            raise UserError(f"'--input': could not read {self.name} as parquet: {one_line(e)}") from None
        self._check_columns(file.schema_arrow.names, "the schema")
        columns = [c for c in dict.fromkeys((self.text_column, self.pair_column, self.id_column, self.label_column))
                   if c]
        number = 0
        for batch in file.iter_batches(batch_size=1024, columns=columns):
            self.bytes_read = min(self.size, self.bytes_read + batch.nbytes)
            for values in batch.to_pylist():
                number += 1
                yield self._row(number, f"row {number}", values)

    def __iter__(self) -> Iterator[Row]:
        yield self._first
        yield from self._rows

    def chunks(self, size: int) -> Iterator[list[Row]]:
        chunk: list[Row] = []
        for row in self:
            chunk.append(row)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdin.buffer:
            self._stream.close()


def read_labelled(path: str, text_column: str, label_column: str) -> tuple[list[str], list]:
    """Every text and label of a labelled file (csv, tsv, jsonl or parquet); a row without a label is an error."""
    if Path(path).suffix.lower() in (".txt", ".text"):
        raise UserError(f"'--data': '{path}' is plain text; labels need csv, tsv, jsonl or parquet")
    reader = InputReader(path, None, text_column, None, label_column)
    try:
        rows = list(reader)
    finally:
        reader.close()
    missing = [r.number for r in rows if r.label is None]
    if missing:
        raise UserError(f"'--data': {len(missing)} row(s) without a label in column '{label_column}'"
                        f" (first: row {missing[0]})")
    return [r.text for r in rows], [r.label for r in rows]


# --- streaming output ----------------------------------------------------------------------------


class OutputWriter:
    """Records as JSON Lines or CSV, staged (see ``staged``) until every row is written: an error or
    Ctrl-C leaves no partial file, and an old file intact. ``-`` writes JSON Lines to stdout."""

    def __init__(self, path: str, fmt: str | None = None):
        self.path = path
        if fmt is None:
            fmt = "jsonl" if path == "-" else OUTPUT_FORMATS.get(Path(path).suffix.lower())
            if fmt is None:
                suffix = Path(path).suffix.lower()
                raise UserError(f"'--output': cannot tell the format of '{path}' from its extension '{suffix}';"
                                f" use .jsonl or .csv{closest(suffix, OUTPUT_FORMATS)} or pass --output-format")
        self.fmt = fmt
        if path != "-":
            target = Path(path)
            if problem := replace_problem(target):
                raise UserError(f"'--output': {problem}")
            if not target.parent.is_dir():
                raise UserError(f"'--output': directory '{target.parent}' does not exist")
            if not os.access(target.parent, os.W_OK):
                raise UserError(f"'--output': directory '{target.parent}' is not writable")
        self._stack = contextlib.ExitStack()
        self._file = None
        self._csv = None
        self.rows = 0

    def __enter__(self) -> "OutputWriter":
        if self.path == "-":
            self._file = sys.stdout
        else:
            tmp = self._stack.enter_context(staged(self.path))
            self._file = self._stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
        return self

    def write(self, records: list[dict]) -> None:
        if self.fmt == "jsonl":
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            flat = [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                     for k, v in r.items()} for r in records]
            if self._csv is None:
                fields = list(dict.fromkeys(k for r in flat for k in r))
                self._csv = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerows(flat)
        self.rows += len(records)
        if self.path == "-":
            self._file.flush()

    def __exit__(self, exc_type, exc, tb) -> bool:
        # closes the file, then renames it into place, or removes it when the block failed
        return self._stack.__exit__(exc_type, exc, tb)
