"""Files out and back in: one atomic writer, and small JSON / JSON Lines readers and writers.

Every file or directory textft writes goes through ``staged``: it is built in a temporary sibling
and renamed over the target, so a reader (or a crash) sees the old version or the new one, never a
mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from textft.errors import UserError, one_line

DATA_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""Extensions of the labelled files ``textft train`` reads, and the ``datasets`` builder of each. Here,
not in textft.data, so that a process that only checks a file name (the service) needs no loader."""


# --- the atomic writer ---------------------------------------------------------------------------


# Read once: os.umask can only be read by setting it, which other threads would see.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def set_umask(mask: int) -> None:
    """Set this process's umask, and the modes given here to what it writes from now on (a service that
    keeps its files private sets 077 after this module was imported)."""
    global _UMASK
    os.umask(mask)
    _UMASK = mask


def _default_mode(directory: bool) -> int:
    return (0o777 if directory else 0o666) & ~_UMASK


def normal_modes(root: Path) -> None:
    """Give a freshly written tree the permissions of any new file (0644 / 0755 under the usual
    umask): mkdtemp makes 0700 directories and safetensors writes 0600 files, which would hide a
    run from the rest of a team sharing the machine."""
    for folder, dirs, files in os.walk(root):
        os.chmod(folder, _default_mode(True))
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, _default_mode(False) | (st.st_mode & 0o111 & ~_UMASK))


_SPECIAL = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
            (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def replace_problem(path: str | Path, directory: bool = False) -> str | None:
    """Why what is at ``path`` must not be replaced by a file (or, with ``directory``, a directory)
    textft writes, or None. Renaming over a symlink, FIFO or device would silently turn it into a
    regular file (or, resolved, overwrite what the link points to)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if directory and stat.S_ISLNK(mode) and Path(path).is_dir():
        return None  # a linked run directory (on a larger disk, say) is written where the link points
    for test, what in _SPECIAL:
        if test(mode):
            hint = "; use '-' for stdout" if str(path).startswith("/dev/") else ""
            return f"'{path}' is {what}, not a regular {'directory' if directory else 'file'}; textft replaces only" \
                   f" regular ones{hint}"
    if stat.S_ISDIR(mode) != directory:
        return f"'{path}' is a {'file' if directory else 'directory'}; name a {'directory' if directory else 'file'}"
    return None


@contextlib.contextmanager
def staged(target: str | Path, *, directory: bool = False, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; when the block succeeds it replaces ``target``.

    Files are flushed to disk and renamed over the target in one step (keeping its permissions).
    A directory's entries named in ``keep`` (logs, resume checkpoints) move across first, which is
    instant at any size; then the old directory is renamed aside, the new one into place, and the
    old one removed. An error or Ctrl-C inside the block removes the temporary and leaves the
    target as it was.
    """
    target = Path(target)
    # The parent's links are followed, the target's own name never is (see replace_problem).
    target = target.resolve() if directory else target.parent.resolve() / target.name
    if problem := replace_problem(target, directory):
        raise UserError(f"cannot write {problem}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            normal_modes(tmp)
        mode = target.stat().st_mode & 0o777 if target.exists() else _default_mode(directory)
        os.chmod(tmp, mode)
        if directory:
            _swap_directory(tmp, target, keep)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            Path(tmp).unlink(missing_ok=True)
        raise


def _swap_directory(tmp: Path, target: Path, keep: tuple[str, ...]) -> None:
    for name in keep:
        if (target / name).exists() and not (tmp / name).exists():
            os.replace(target / name, tmp / name)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def disk_error(e: BaseException) -> str | None:
    """The one-line reason of a failed write, or None when ``e`` is not a write failure.

    A full disk does not always surface as OSError: safetensors raises SafetensorError
    ("IoError(Os { code: 28, kind: StorageFull ...})") and torch.save a RuntimeError.
    """
    from safetensors import SafetensorError

    if isinstance(e, OSError):
        return e.strerror or str(e)
    if isinstance(e, (SafetensorError, RuntimeError)):
        text = str(e)
        if "code: 28" in text or "StorageFull" in text or "No space left" in text:
            return "No space left on device"
        if isinstance(e, SafetensorError) or "file write failed" in text or "Os {" in text:
            return " ".join(text.split())[:200]
    return None



def write_atomically(out_dir: str | Path, write: Callable[[Path], None], keep: tuple[str, ...] = ()) -> Path:
    """Build a directory's new contents with ``write(tmp)`` and swap them into place (see ``staged``);
    a write error (a full disk included, whatever the library raising it) becomes one UserError
    naming the directory."""
    out_dir = Path(out_dir).resolve()
    try:
        with staged(out_dir, directory=True, keep=keep) as tmp:
            write(tmp)
    except Exception as e:
        if (reason := disk_error(e)) is None:
            raise
        raise UserError(f"could not write '{out_dir}': {reason}") from None
    return out_dir


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no space, no time), or a copy where links are impossible
    (another filesystem). Safe because textft never rewrites a file in place."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def replace_file(path: str | Path, data: str | bytes) -> None:
    """Write a whole file atomically (see ``staged``); a write error becomes one UserError."""
    try:
        with staged(path) as tmp:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as e:
        raise UserError(f"could not write '{path}': {e.strerror or e}") from None


# --- JSON records --------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' could not be read as JSON: {one_line(e)}") from None


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON Lines file; a torn last line (a run killed mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    replace_file(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
