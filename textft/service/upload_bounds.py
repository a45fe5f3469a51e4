"""The shape of an uploaded file, bounded before a loader reads it: columns, bytes per row and cells
(rows x columns).

Read as a stream, one row at a time, stopping at the first row past a bound: a file of a million
columns or one endless line is refused for the price of reading its first line, and nothing here
grows with the file. Formats read whole by their loaders (a JSON array) are bounded by size first.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

JSON_ARRAY_BYTES = 50 << 20
"""A JSON array is parsed whole; larger ones must come as JSON Lines."""


def shape_problems(path: str, suffix: str, columns: int, row_bytes: int, cells: int,
                   header_only: bool = False) -> list[tuple[str, str]]:
    """(field, message, kind) for the first bound the file passes, or []; ``header_only``: the columns and
    the first rows alone (enough to show them)."""
    try:
        if suffix in (".csv", ".tsv"):
            problem = _delimited(path, "\t" if suffix == ".tsv" else ",", columns, row_bytes, cells, header_only)
        elif suffix in (".json", ".jsonl"):
            problem = _json(path, columns, row_bytes, cells, header_only)
        elif suffix == ".parquet":
            problem = _parquet(path, columns, cells)
        else:
            problem = None
    except (OSError, ValueError, csv.Error):
        problem = None  # unreadable: the loader says why, with its own message
    return [("file", f"'file': {problem}", "invalid")] if problem else []


def _too_many_columns(n: int, columns: int, at_least: bool = False) -> str:
    return (f"it has {'at least ' if at_least else ''}{n:,} columns; the service reads files of at most {columns:,}"
            " (keep the text and label columns)")


def _too_long(row: int, size: int, row_bytes: int) -> str:
    return (f"row {row:,} is {size / 1e6:.1f} MB or more; the service reads rows of at most {row_bytes / 1e6:g} MB"
            " (the model reads only the first few hundred tokens of a text)")


def _too_many_cells(rows: int, width: int, cells: int) -> str:
    return (f"{rows:,} rows x {width:,} columns is more than the {cells:,} cells the service reads in one file;"
            " upload fewer rows or columns")


def _delimited(path: str, delimiter: str, columns: int, row_bytes: int, cells: int, header_only: bool) -> str | None:
    with open(path, "rb") as f:
        first = f.readline(row_bytes + 1)
    # An upper bound of the columns (a quoted delimiter counts too): exact below, once the line is bounded.
    if first.count(delimiter.encode()) + 1 > columns:
        if len(first) > row_bytes:
            return _too_many_columns(first.count(delimiter.encode()) + 1, columns, at_least=True)
        header = next(csv.reader([first.decode("utf-8-sig", "replace")], delimiter=delimiter), [])
        if len(header) > columns:
            return _too_many_columns(len(header), columns)
    if len(first) > row_bytes:
        return _too_long(1, len(first), row_bytes)
    limit = csv.field_size_limit()
    csv.field_size_limit(row_bytes)
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            width, rows = 0, 0
            try:
                for row in reader:
                    if not row:
                        continue
                    if not width:
                        width = len(row)
                        continue
                    if sum(map(len, row)) + len(row) > row_bytes:
                        return _too_long(reader.line_num, sum(map(len, row)), row_bytes)
                    rows += 1
                    if rows * width > cells:
                        return _too_many_cells(rows, width, cells)
                    if header_only and rows >= 5:
                        return None
            except csv.Error as e:
                if "field larger than field limit" in str(e):
                    return _too_long(reader.line_num, row_bytes, row_bytes)
                return None
    finally:
        csv.field_size_limit(limit)
    return None


def _json(path: str, columns: int, row_bytes: int, cells: int, header_only: bool) -> str | None:
    with open(path, "rb") as f:
        if f.read(1 << 16).lstrip()[:1] == b"[":
            return _json_array(path, columns, cells)
        f.seek(0)
        total, line_no, objects = 0, 0, 0
        while True:
            line = f.readline(row_bytes + 1)
            if not line:
                return None
            line_no += 1
            if len(line) > row_bytes:
                return _too_long(line_no, len(line), row_bytes)
            if not line.strip():
                continue
            value = json.loads(line)
            keys = len(value) if isinstance(value, dict) else 1
            if keys > columns:
                return _too_many_columns(keys, columns)
            total, objects = total + keys, objects + 1
            if total > cells:
                return _too_many_cells(objects, keys, cells)
            if header_only and objects >= 5:
                return None


def _json_array(path: str, columns: int, cells: int) -> str | None:
    size = Path(path).stat().st_size
    if size > JSON_ARRAY_BYTES:
        return (f"a JSON array of {size / 1e6:.0f} MB; the service reads arrays of at most"
                f" {JSON_ARRAY_BYTES / 1e6:.0f} MB: upload it as JSON Lines (one object per line)")
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        return None
    widths = [len(r) if isinstance(r, dict) else 1 for r in records]
    if widths and max(widths) > columns:
        return _too_many_columns(max(widths), columns)
    if sum(widths) > cells:
        return _too_many_cells(len(records), max(widths), cells)
    return None


def _parquet(path: str, columns: int, cells: int) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    if meta.num_columns > columns:
        return _too_many_columns(meta.num_columns, columns)
    if meta.num_rows * meta.num_columns > cells:
        return _too_many_cells(meta.num_rows, meta.num_columns, cells)
    return None
