"""``textft service backup`` and ``textft service restore``: a data directory as one archive, and back.

Backup works while the service runs. The database is copied with SQLite's online backup API, which
yields one consistent snapshot even while the service writes; that snapshot is the source of truth:
the archive holds it and the files of the datasets and jobs it names (uploads, job directories with
their models, reports and logs, and the checkpoints of unfinished jobs), each with its size and
SHA-256 in the manifest. A job created after the snapshot is not in it, and its files are left out;
one deleted meanwhile is listed as missing. The embedded queue, the datasets cache and the worker
heartbeats are not kept: a restored service rebuilds them (queued jobs are queued again, running
ones resume from their latest checkpoint).

Restore unpacks into an empty (or new) directory only, checks every file against the manifest and
the database's integrity before anything becomes visible, and on any problem removes only what it
unpacked. It never overwrites or deletes a file it did not write.

Archive layout: ``textft-backup/manifest.json``, ``textft-backup/textft.db``, ``textft-backup/datasets/...``,
``textft-backup/jobs/...``; ``.tar.gz``/``.tgz`` is compressed, any other name is a plain tar (model
weights hardly compress, and gzip on a busy CPU is the slow part).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from textft.service.layout import DataDir
from textft.service.store import SCHEMA_VERSION, Store, database_contents, snapshot_database
from textft.service.textft_api import UserError, __version__

ROOT = "textft-backup"
FORMAT = "textft-backup"
FORMAT_VERSION = 1
IN_MEMORY = 64 << 20
"""Files up to this size are read whole before they are archived, so one that a running job rewrites
meanwhile is archived as one consistent version (larger ones are model weights, written once)."""
CHUNK = 1 << 20


def _compressed(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()) if root.is_dir() else []


class _Hashing(io.RawIOBase):
    """Reads ``size`` bytes of a file, hashing them on the way into the archive."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n


def _add_file(tar: tarfile.TarFile, path: Path, name: str) -> dict | None:
    """Archive one file as it is now; its size and SHA-256, or None when it vanished meanwhile."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        stat = os.fstat(f.fileno())
        info = tarfile.TarInfo(name)
        info.mtime, info.mode = int(stat.st_mtime), 0o644
        digest = hashlib.sha256()
        if stat.st_size <= IN_MEMORY:
            content = f.read()
            info.size = len(content)
            digest.update(content)
            tar.addfile(info, io.BytesIO(content))
        else:
            info.size = stat.st_size
            tar.addfile(info, io.BufferedReader(_Hashing(f, digest), CHUNK))
    return {"size": info.size, "sha256": digest.hexdigest()}


def backup(data_dir: Path, to: Path) -> dict:
    """Write the archive of a data directory (the service may be running); returns its manifest."""
    data = DataDir(data_dir)
    to = Path(to).expanduser().resolve()
    if not data.db.is_file():
        raise UserError(f"'--data-dir': '{data.root}' has no textft.db; give the data directory of a textft service")
    if to.exists():
        raise UserError(f"'--to': '{to}' already exists; choose a new file name (a backup never overwrites one)")
    if not to.parent.is_dir():
        raise UserError(f"'--to': directory '{to.parent}' does not exist")
    if to.is_relative_to(data.root):
        raise UserError(f"'--to': '{to}' is inside the data directory; write the backup somewhere else")
    partial = to.with_name(f".{to.name}.partial")
    with tempfile.TemporaryDirectory(prefix=".textft-backup-", dir=to.parent) as tmp:
        snapshot = Path(tmp) / "textft.db"
        contents = snapshot_database(data.db, snapshot)
        files: dict[str, dict] = {}
        missing: list[str] = []
        try:
            with (tarfile.open(partial, "w:gz", compresslevel=6) if _compressed(to) else tarfile.open(partial, "w")) as tar:
                files["textft.db"] = _add_file(tar, snapshot, f"{ROOT}/textft.db")
                folders = [data.root / Path(d["path"]).parent for d in contents["datasets"]]
                folders += [data.job(j["id"]) for j in contents["jobs"]]
                for folder in folders:
                    found = _files(folder)
                    if not found:
                        missing.append(str(folder.relative_to(data.root)))
                    for path in found:
                        rel = str(path.relative_to(data.root))
                        record = _add_file(tar, path, f"{ROOT}/{rel}")
                        if record is not None:
                            files[rel] = record
                manifest = {"format": FORMAT, "version": FORMAT_VERSION, "textft": __version__,
                            "schema": contents["schema"], "created_at": time.time(), "keys": contents["keys"],
                            "datasets": len(contents["datasets"]), "jobs": len(contents["jobs"]),
                            "job_states": _states(contents["jobs"]), "missing": missing, "files": files}
                raw = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(f"{ROOT}/manifest.json")
                info.size, info.mtime, info.mode = len(raw), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(raw))
            with open(partial, "rb+") as f:
                os.fchmod(f.fileno(), 0o600)  # it holds the keys' webhook secrets, as the database does
                os.fsync(f.fileno())
            os.replace(partial, to)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return manifest


def _states(jobs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in jobs:
        out[job["state"]] = out.get(job["state"], 0) + 1
    return out


def _safe_name(name: str) -> str | None:
    """The path under the data directory of an archive member, None for anything outside ``ROOT/``."""
    if not name.startswith(ROOT + "/"):
        return None
    rel = name[len(ROOT) + 1:]
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or parts[0] not in ("textft.db", "datasets", "jobs",
                                                                                "manifest.json"):
        return None
    return rel


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        member = tar.getmember(f"{ROOT}/manifest.json")
        manifest = json.load(tar.extractfile(member))
    except (KeyError, ValueError, AttributeError):
        raise UserError(f"'--from': '{archive}' is not a textft backup (no {ROOT}/manifest.json)") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise UserError(f"'--from': '{archive}' is not a textft backup (its manifest is not one)")
    if manifest.get("version", 0) > FORMAT_VERSION or manifest.get("schema", 0) > SCHEMA_VERSION:
        raise UserError(f"'--from': '{archive}' was written by textft {manifest.get('textft')} (database schema"
                        f" {manifest.get('schema')}); this textft {__version__} reads schema {SCHEMA_VERSION}:"
                        " restore it with that version or a newer one")
    return manifest


def _unpack(tar: tarfile.TarFile, manifest: dict, staging: Path, archive: Path) -> None:
    """Every file of the manifest into ``staging``, each checked against its size and SHA-256."""
    problems, seen = [], set()
    for member in tar:
        rel = _safe_name(member.name)
        if rel == "manifest.json" or member.isdir():
            continue
        if rel is None or not member.isfile() or rel not in manifest["files"]:
            problems.append(f"unexpected member '{member.name}'")
            continue
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with tar.extractfile(member) as src, open(dest, "xb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        expected = manifest["files"][rel]
        if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
            problems.append(f"'{rel}' does not match the manifest (damaged archive)")
        seen.add(rel)
    problems += [f"'{rel}' is missing from the archive" for rel in sorted(set(manifest["files"]) - seen)]
    if problems:
        raise UserError([f"'--from': '{archive}': {p}" for p in problems[:20]])


def restore(archive: Path, data_dir: Path) -> dict:
    """Unpack a backup into an empty data directory; returns its manifest."""
    archive, target = Path(archive).expanduser(), Path(data_dir).expanduser().resolve()
    if not archive.is_file():
        raise UserError(f"'--from': no file '{archive}'")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"'--data-dir': '{target}' is not an empty directory; restore into a new or empty one"
                        " (a restore never overwrites or deletes files)")
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restoring-", dir=target))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                manifest = _read_manifest(tar, archive)
                _unpack(tar, manifest, staging, archive)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"'--from': '{archive}' cannot be read as a backup: {e}") from None
        check = database_contents(staging / "textft.db")
        if check["integrity"] != "ok":
            raise UserError(f"'--from': the database in '{archive}' is damaged ({check['integrity']})")
        for entry in sorted(staging.iterdir()):
            entry.rename(target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only what this restore unpacked
    Store(DataDir(target).create().db).close()  # an older schema is brought up to date now
    return manifest
