"""``textft configs list|show|path|copy``: the packaged presets, listed, printed, located and copied
out for editing (torchtune's ``tune ls`` / ``tune cp``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textft.errors import UserError
from textft.files import replace_file
from textft.presets import Preset, find, presets

HEADINGS = {"train": "training presets: textft train --config NAME",
            "sweep": "sweep spaces: textft sweep --config NAME --sweep NAME --trials N",
            "accelerate": "Accelerate launch configs: accelerate launch --config_file \"$(textft configs path NAME)\""
                          " -m textft.train --config NAME"}

NEXT_STEP = {"train": "train with: textft train --config {dest}",
             "sweep": "search with: textft sweep --config quickstart --sweep {dest} --trials 8",
             "accelerate": "launch with: accelerate launch --config_file {dest} -m textft.train --config quickstart"}


def list_lines() -> list[str]:
    found = presets()
    width = max(len(name) for name in found) + 2
    lines = []
    for kind, heading in HEADINGS.items():
        lines += [""] if lines else []
        lines += [heading] + [f"  {p.name:<{width}}{p.summary}" for p in found.values() if p.kind == kind]
    return lines


def copy_preset(preset: Preset, dest: str | None, force: bool) -> Path:
    """Write the preset to ``dest`` (a file, or a directory to put ``NAME.yaml`` in; default: here)."""
    target = Path(dest).expanduser() if dest else Path(preset.file_name)
    if target.is_dir():
        target = target / preset.file_name
    if target.suffix not in (".yaml", ".yml"):
        raise UserError(f"'DEST': '{dest}' must end in .yaml or .yml (or name an existing directory)")
    if target.exists() and not force:
        raise UserError(f"'{target}' already exists; pass --force to replace it, or name another DEST")
    if not target.parent.is_dir():
        raise UserError(f"'DEST': directory '{target.parent}' does not exist")
    replace_file(target, preset.path.read_bytes())
    return target


def configs_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft configs", description="The preset configs that ship with textft. Any command that takes a"
        " config takes a preset name or a file; an existing file wins over a preset of the same name.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every preset with its one-line description")
    show = sub.add_parser("show", help="print a preset")
    show.add_argument("name", help="preset name, e.g. quickstart or accelerate/fsdp")
    where = sub.add_parser("path", help="print the file of a preset (for accelerate launch --config_file)")
    where.add_argument("name", help="preset name, e.g. accelerate/multi_gpu_ddp")
    copy = sub.add_parser("copy", help="write a preset out for editing")
    copy.add_argument("name", help="preset name, e.g. quickstart or sweeps/default")
    copy.add_argument("dest", nargs="?", help="file or existing directory (default: ./NAME.yaml)")
    copy.add_argument("--force", action="store_true", help="replace DEST if it exists")
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(list_lines()))
        return 0
    preset = find(args.name)
    if args.action == "show":
        text = preset.path.read_text(encoding="utf-8")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    elif args.action == "path":
        print(preset.path)
    else:
        target = copy_preset(preset, args.dest, args.force)
        print(f"copied preset '{preset.name}' to {target}; " + NEXT_STEP[preset.kind].format(dest=target))
    return 0
