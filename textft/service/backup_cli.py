"""Command lines: ``textft service backup --data-dir DIR --to FILE`` and ``textft service restore --from FILE
--data-dir DIR`` (``textft.service.backup`` does the work)."""

from __future__ import annotations

import time
from pathlib import Path

from textft.service.backup import backup, restore
from textft.service.env_options import EnvParser


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} GB"


def _summary(manifest: dict) -> str:
    states = ", ".join(f"{n} {state}" for state, n in sorted(manifest.get("job_states", {}).items()))
    total = sum(f["size"] for f in manifest["files"].values())
    return (f"{manifest['keys']} key(s), {manifest['datasets']} dataset(s), {manifest['jobs']} job(s)"
            f"{f' ({states})' if states else ''}, {len(manifest['files'])} files, {_size(total)}")


def backup_main(argv: list[str]) -> int:
    parser = EnvParser(prog="textft service backup",
                       description="Archive a service's data directory (database, datasets, jobs and models) into"
                                   " one file, consistently, while the service runs.")
    parser.option("--data-dir", required=True, help="the service's data directory")
    parser.add_argument("--to", required=True, type=Path,
                        help="the archive to write (.tar.gz or .tgz: compressed; else a plain tar); must not exist")
    args, _ = parser.parse(argv)
    started = time.monotonic()
    manifest = backup(Path(args.data_dir), args.to)
    print(f"backed up {_summary(manifest)} to {Path(args.to).expanduser().resolve()}"
          f" in {time.monotonic() - started:.1f} s")
    for folder in manifest["missing"]:
        print(f"note: {folder} was deleted while the backup ran; its record stays in the database snapshot")
    return 0


def restore_main(argv: list[str]) -> int:
    parser = EnvParser(prog="textft service restore",
                       description="Unpack a backup (textft service backup) into a new or empty data directory,"
                                   " every file checked; then start textft service --data-dir on it.")
    parser.add_argument("--from", dest="source", required=True, type=Path, help="the archive to restore")
    parser.option("--data-dir", required=True, help="the data directory to create: new or empty")
    args, _ = parser.parse(argv)
    started = time.monotonic()
    manifest = restore(args.source, Path(args.data_dir))
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest["created_at"]))
    print(f"restored {_summary(manifest)} (backup of {taken}, textft {manifest['textft']}) into"
          f" {Path(args.data_dir).expanduser().resolve()} in {time.monotonic() - started:.1f} s")
    return 0
