"""Uploads: a multipart body streamed to disk under a size limit, then checked like ``textft train``.

The file part goes straight to the dataset's directory (invisible until its database row exists)
in chunks, so memory stays flat whatever the size; the limit is enforced on the declared length
and again on the bytes received (413), text formats are checked for UTF-8 as they arrive, and a
full disk ends the upload with 507. The complete file is then read by textft.data.load_splits in
a separate process: the same checks and messages as ``textft train`` (422, every problem at once),
without the service's own memory growing with the file. Nothing remains of a refused upload.
"""

from __future__ import annotations

import codecs
import csv
import ctypes
import errno
import gc
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from textft.service.containment import ALLOCATION_FAILURES
from textft.service.problems import STATUS
from textft.service.textft_api import Problem, UserError, closest
from textft.service.upload_bounds import shape_problems

TEXT_FORMATS = {".csv", ".tsv", ".json", ".jsonl"}
FIELD_LIMIT = 4096
"""Bytes of a non-file form field (column names, a display name)."""
BODY_SLACK = 1 << 20
"""Bytes a multipart body may carry beyond the file itself (boundaries, headers, fields)."""
PREVIEW_ROWS = 5
PREVIEW_CHARS = 300


class UploadError(UserError):
    """An upload refused; ``close``: the rest of the body is not read, so the connection closes."""

    def __init__(self, message: str, field: str | None = "file", kind: str = "invalid", close: bool = False):
        super().__init__(message, field, kind)
        self.close = close

    @property
    def status(self) -> int:
        return STATUS[self.kind]


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0


MAX_NAME = 200


def safe_name(filename: str) -> str:
    """The file's own name in safe characters, at most MAX_NAME of them; a cut keeps the extension."""
    name = re.sub(r"[^\w.\- ]", "_", Path(filename.replace("\\", "/")).name).strip() or "upload"
    if len(name) <= MAX_NAME:
        return name
    suffix = Path(name).suffix[:16]
    return name[:MAX_NAME - len(suffix)].rstrip() + suffix


class _Receiver:
    """Callbacks of python_multipart's streaming parser: small fields in memory, the file to disk."""

    def __init__(self, dest: Path, max_bytes: int, formats: tuple[str, ...]):
        self.dest, self.max_bytes, self.formats = dest, max_bytes, formats
        self.upload = Upload()
        self.header_name = self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.part_name: str | None = None
        self.in_file = False
        self.buffer = bytearray()
        self.file = None
        self.decoder = None
        self.utf8_error: str | None = None
        self.lines = 1
        self.pending: list[bytes] = []

    def on_part_begin(self):
        self.headers, self.buffer, self.part_name, self.in_file = {}, bytearray(), None, False

    def on_header_field(self, data, start, end):
        self.header_name += data[start:end]

    def on_header_value(self, data, start, end):
        self.header_value += data[start:end]

    def on_header_end(self):
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self):
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.part_name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if self.part_name != "file" or self.upload.filename is not None:
                raise UploadError(f"'{self.part_name}': send one file, in the field named 'file'", self.part_name)
            filename = safe_name(options[b"filename"].decode("utf-8", "replace"))
            suffix = Path(filename).suffix.lower()
            if suffix not in self.formats:
                raise UploadError(f"'file': unsupported extension '{Path(filename).suffix}' of '{filename}';"
                                  f" expected one of {', '.join(self.formats)}{closest(suffix, self.formats)}")
            self.upload.filename = filename
            self.in_file = True
            self.upload.path = self.dest / f"data{suffix}"
            self.dest.mkdir(parents=True, exist_ok=True)
            self.file = open(self.upload.path, "wb")
            if suffix in TEXT_FORMATS:
                self.decoder = codecs.getincrementaldecoder("utf-8")()

    def on_part_data(self, data, start, end):
        chunk = data[start:end]
        if not self.in_file:
            if len(self.buffer) + len(chunk) > FIELD_LIMIT:
                raise UploadError(f"'{self.part_name}': form field longer than {FIELD_LIMIT} bytes",
                                  self.part_name or "form")
            self.buffer += chunk
            return
        self.upload.size += len(chunk)
        if self.upload.size > self.max_bytes:
            raise UploadError(f"'file': larger than this key's upload limit of {self.max_bytes / 1e6:g} MB",
                              kind="too_large", close=True)
        if self.decoder is not None and self.utf8_error is None:
            self._check_utf8(chunk)
        self.pending.append(bytes(chunk))

    def _check_utf8(self, chunk: bytes) -> None:
        try:
            self.decoder.decode(chunk)
            self.lines += chunk.count(b"\n")
        except UnicodeDecodeError as e:
            line = self.lines + chunk[:e.start].count(b"\n")
            self.utf8_error = (f"'file': '{self.upload.filename}' is not UTF-8 text (byte 0x{chunk[e.start]:02x}"
                               f" on line {line}); save it as UTF-8 and upload it again")

    def on_part_end(self):
        if not self.in_file and self.part_name:
            self.upload.fields[self.part_name] = self.buffer.decode("utf-8", "replace")

    def flush(self) -> None:
        """Write the file data parsed from the last chunk (outside the parser's callbacks)."""
        if self.file is not None and self.pending:
            try:
                for piece in self.pending:
                    self.file.write(piece)
            except OSError as e:
                raise _disk_error(e) from None
            self.pending = []

    def finish(self) -> Upload:
        if self.file is not None:
            try:
                self.file.flush()
                self.file.close()
            except OSError as e:
                raise _disk_error(e) from None
            if self.decoder is not None and self.utf8_error is None:
                try:
                    self.decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    self.utf8_error = f"'file': '{self.upload.filename}' ends inside a UTF-8 character; save it as UTF-8"
        if self.utf8_error:
            raise UploadError(self.utf8_error)
        return self.upload

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()


def _disk_error(e: OSError) -> UploadError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadError("the service's disk is full; nothing was stored. Try again later or ask the operator to"
                           " free space", kind="storage", close=True)
    return UploadError(f"could not store the upload: {e.strerror or e}", kind="internal", close=True)


async def receive(request, dest: Path, max_bytes: int, formats: tuple[str, ...]) -> Upload:
    """Stream a multipart upload into ``dest``; on any error ``dest`` is removed and UploadError raised."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError("send the file as multipart/form-data, e.g. curl -F file=@train.csv -F text_column=text"
                          " -F label_column=label", kind="unsupported")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + BODY_SLACK:
        raise UploadError(f"'file': the request has {int(declared) / 1e6:.1f} MB; this key's upload limit is"
                          f" {max_bytes / 1e6:g} MB", kind="too_large", close=True)
    receiver = _Receiver(dest, max_bytes, formats)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": receiver.on_part_begin, "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end, "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value, "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + BODY_SLACK:
                raise UploadError(f"'file': larger than this key's upload limit of {max_bytes / 1e6:g} MB",
                                  kind="too_large", close=True)
            try:
                parser.write(chunk)
            except UploadError:
                raise
            except Exception as e:  # python_multipart raises its own errors for malformed bodies
                raise UploadError(f"malformed multipart body: {e}", kind="malformed") from None
            receiver.flush()
        parser.finalize()
        upload = receiver.finish()
    except BaseException:
        receiver.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if upload.path is None:
        shutil.rmtree(dest, ignore_errors=True)
        raise UploadError("no file: send it in the form field 'file' (curl -F file=@train.csv)")
    return upload


# --- checks in a separate process -----------------------------------------------------------


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


FORM_FIELD_OF_KEY = {"data.train_file": "file", "data.text_column": "text_column",
                     "data.text_pair_column": "text_pair_column", "data.label_column": "label_column",
                     "data.drop_empty": "drop_empty"}
"""The upload form field of each config key a check of the file can name; any other problem is the file's."""


def as_upload_problem(problem: Problem, path: str, filename: str) -> Problem:
    """A problem of ``textft train`` in the terms of the upload: the file's name for the server path,
    the form field for the config key, in the message and as its field."""
    message = str(problem).replace(path, filename).replace("'data.train_file'", "'file'")
    for key, name in FORM_FIELD_OF_KEY.items():
        message = message.replace(key, name) if name != "file" else message
    return Problem(message, FORM_FIELD_OF_KEY.get(problem.field, "file"), problem.kind)


def problems_of(result: dict) -> list[Problem]:
    """The problems a check in the checking process returned, as (field, message, kind) to cross the
    process boundary as plain values."""
    return [Problem(message, field, kind) for field, message, kind in result.get("problems") or ()]


def as_tuple(problem: Problem) -> tuple[str | None, str, str]:
    return problem.field, str(problem), problem.kind


def inspect(path: str, filename: str, text_column: str, label_column: str, drop_empty: bool,
            scratch: str, text_pair_column: str | None = None, bounds: dict | None = None) -> dict:
    """Row count, task, label distribution and preview of an upload (text pairs when
    ``text_pair_column`` names the second text), or the problems ``textft train`` would report.
    ``bounds`` (upload_bounds.shape_problems' limits) are checked first, reading the file as a stream."""
    import datasets

    from textft.service.textft_api import DataConfig, load_splits

    if bounds and (problems := shape_problems(path, Path(filename).suffix.lower(), **bounds)):
        return {"problems": problems}
    cache = tempfile.mkdtemp(prefix="check-", dir=scratch)
    saved = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = Path(cache)  # this process checks one file at a time
    datasets.disable_progress_bars()
    try:
        try:
            data = load_splits(DataConfig(train_file=path, text_column=text_column, label_column=label_column,
                                          text_pair_column=text_pair_column, drop_empty=drop_empty))
        except UserError as e:
            resource_failure(e.problems)
            return {"problems": [as_tuple(as_upload_problem(p, path, filename)) for p in e.problems]}
        try:
            return _summary(data, text_pair_column)
        finally:
            del data  # its Arrow files are closed here, before the cache holding them is deleted
            _release_memory()
    finally:
        datasets.config.HF_DATASETS_CACHE = saved
        shutil.rmtree(cache, ignore_errors=True)


def resource_failure(problems: list[str]) -> None:
    """The loader reports a full disk or a failed allocation as a file it could not read: raise them
    as what they are, so that the upload is answered 507 or 413 rather than blamed on the file."""
    text = " ".join(problems)
    if "No space left on device" in text or "[Errno 28]" in text or "Disk quota exceeded" in text:
        raise OSError(errno.ENOSPC, "No space left on device")
    if any(marker in text for marker in ALLOCATION_FAILURES):
        raise MemoryError(text[:200])


def _summary(data, text_pair_column: str | None) -> dict:
    task, train = data.task, data.splits["train"]
    labels = [y for split in data.splits.values() for y in split["labels"][:]]
    counts = task.label_counts(labels)
    head = train.select(range(min(PREVIEW_ROWS, len(train))))
    seconds = head["text_pair"][:] if text_pair_column else [None] * len(head)
    preview = [{"text": t[:PREVIEW_CHARS], **({"text_pair": p[:PREVIEW_CHARS]} if p is not None else {}),
                "label": task.describe_label(y)}
               for t, p, y in zip(head["text"][:], seconds, head["labels"][:])]
    return {"rows": len(labels), "task": task.name, "labels": counts, "preview": preview}


def peek(path: str, suffix: str, rows: int = PREVIEW_ROWS, bounds: dict | None = None) -> dict:
    """Column names and the first rows of a file, to choose the text and label columns; ``bounds`` as
    for ``inspect``, on the columns and the rows read."""
    if bounds and (problems := shape_problems(path, suffix, **{**bounds, "header_only": True})):
        return {"problems": problems}
    try:
        if suffix in (".csv", ".tsv"):
            columns, records = _delimited_records(path, "\t" if suffix == ".tsv" else ",", rows)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            columns = list(pf.schema_arrow.names)
            batch = next(pf.iter_batches(batch_size=rows), None)
            records = batch.to_pylist() if batch is not None else []
        else:
            records = _json_records(path, rows)
            columns = list(dict.fromkeys(k for r in records for k in r))
    except MemoryError:
        raise
    except Exception as e:  # readers raise many types for one cause: an unreadable file
        return {"problems": [("file", f"'file': could not read it as {suffix[1:]}: {' '.join(str(e).split())[:300]}",
                              "invalid")]}
    finally:
        _release_memory()
    records = [{k: (v[:PREVIEW_CHARS] if isinstance(v, str) else v) for k, v in r.items()} for r in records[:rows]]
    return {"columns": columns, "rows": records, "suggested": suggest_columns(columns, records)}


def _delimited_records(path: str, delimiter: str, rows: int, strict: bool = True) -> tuple[list[str], list[dict]]:
    """The header and the first data rows of a csv/tsv file, values as the strings they are (a
    missing trailing field is None). Blank lines are skipped; a quote left open at the end of the
    file and a row with more fields than the header are errors, text after a closing quote is
    kept, as the training loader does."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long texts are fields too
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, strict=strict)
            lines = (row for row in reader if row)
            header = next(lines, None)
            if header is None:
                raise ValueError("no columns to parse: the file is empty")
            columns, records = _column_names(header), []
            for row in lines:
                if len(row) > len(columns):
                    raise ValueError(f"expected {len(columns)} fields in line {reader.line_num}, saw {len(row)}")
                records.append(dict(zip(columns, row + [None] * (len(columns) - len(row)))))
                if len(records) >= rows:
                    break
    except csv.Error as e:
        # strict parsing tells an unclosed quote apart; anything else it refuses, the loader reads
        if "unexpected end of data" in str(e):
            raise ValueError("the file ends inside a quoted field (a quote that is never closed)") from None
        if not strict:
            raise
        return _delimited_records(path, delimiter, rows, strict=False)
    return columns, records


def _column_names(header: list[str]) -> list[str]:
    """Header names as the training loader sees them: unnamed ones numbered, repeats suffixed .1, .2."""
    names, seen = [], {}
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, n = name, seen.get(name, 0)
        while name in seen:
            n += 1
            name = f"{base}.{n}"
        seen[base] = n
        seen.setdefault(name, 0)
        names.append(name)
    return names


def _json_records(path: str, rows: int) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        first = f.read(1 << 16)
    if first.lstrip().startswith("["):  # one JSON array: parsed whole, so only when it is small
        if Path(path).stat().st_size > 50 << 20:
            raise ValueError("a JSON array over 50 MB; upload it as JSON Lines (one object per line)")
        return [r for r in json.loads(Path(path).read_text(encoding="utf-8"))[:rows] if isinstance(r, dict)]
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
            if len(records) >= rows:
                break
    return records


TEXT_NAMES = ("text", "sentence", "review", "content", "body", "query", "utterance", "comment", "sentence1",
              "question1", "text_a", "premise")
PAIR_NAMES = ("text_pair", "sentence2", "question2", "text_b", "hypothesis", "text2")
"""Second-text columns of common pair datasets (MRPC, QQP, NLI), suggested only when present."""
LABEL_NAMES = ("label", "labels", "intent", "sentiment", "category", "class", "target", "stars")


def suggest_columns(columns: list[str], records: list[dict]) -> dict:
    lower = {c.lower(): c for c in columns}
    pair = next((lower[n] for n in PAIR_NAMES if n in lower), None)
    text = next((lower[n] for n in TEXT_NAMES if n in lower), None)
    if text is None:
        lengths = {c: sum(len(r.get(c)) for r in records if isinstance(r.get(c), str)) for c in columns if c != pair}
        text = max(lengths, key=lengths.get) if lengths and max(lengths.values()) else None
    label = next((lower[n] for n in LABEL_NAMES if n in lower and lower[n] != text), None)
    return {"text_column": text, "label_column": label, **({"text_pair_column": pair} if pair else {})}


def exit_with_parent(parent: int) -> None:
    """A checking process ends with the service, also when the service is killed with SIGKILL.

    A watcher thread rather than prctl(PR_SET_PDEATHSIG): that signal fires when the *thread* that
    started the process ends, and the pool starts its processes from whichever thread needs one.
    """
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="textft-parent-watch", daemon=True).start()


def warm_up() -> bool:
    """Check a small file: the loader's modules and builders load now rather than on the first
    upload (seconds a first check would otherwise spend, and count against its time limit). The
    file is made up, so it lives in the system's temporary directory, not among the uploads."""
    with tempfile.TemporaryDirectory(prefix="textft-warm-up-") as scratch:
        path = Path(scratch) / "warm-up.jsonl"
        path.write_text('{"text": "good", "label": "a"}\n{"text": "bad", "label": "b"}\n' * 10)
        return "rows" in inspect(str(path), path.name, "text", "label", False, scratch)
