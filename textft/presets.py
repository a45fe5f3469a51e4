"""The preset configs that ship inside the package: training presets (``quickstart``, ``imdb``, ...),
sweep spaces (``sweeps/default``) and Accelerate launch configs (``accelerate/fsdp``).

They live in ``textft/configs`` and are found through importlib.resources, so a wheel install has
them whatever the current directory. Wherever textft takes a config it takes a file or a preset
name: an existing file wins (a preset copied out with ``textft configs copy`` and edited is what the
user means), else the preset of that name, else an error naming the closest preset. Each preset's
first line is a comment that describes it in one line; the comment lines below it say more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textft.errors import UserError, closest

log = logging.getLogger(__name__)

KINDS = {"train": "", "sweep": "sweeps", "accelerate": "accelerate"}
"""Each kind of preset and the folder of ``textft/configs`` it lives in (training presets at the top)."""

SUFFIXES = (".yaml", ".yml")

ARTICLES = {"train": "a training preset (textft train --config)", "sweep": "a sweep space (textft sweep --sweep)",
            "accelerate": "an Accelerate launch config (accelerate launch --config_file)"}


@dataclass(frozen=True)
class Preset:
    name: str
    """What a command line takes: ``quickstart``, ``sweeps/default``, ``accelerate/fsdp``."""
    kind: str
    """train, sweep or accelerate (see ``KINDS``)."""
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name

    def header(self) -> list[str]:
        """The leading comment lines, without their ``#``."""
        lines = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
        return lines

    @property
    def summary(self) -> str:
        """The one-line description (the first comment line)."""
        return next(iter(self.header()), "")

    @property
    def description(self) -> str:
        """Every leading comment line, as one paragraph."""
        return " ".join(line for line in self.header() if line)


def package_dir() -> Path:
    """``textft/configs`` of the installed package (a real directory: textft is never imported from a zip)."""
    return Path(str(resources.files("textft").joinpath("configs")))


def presets(kind: str | None = None, extra_dirs: tuple[Path, ...] = ()) -> dict[str, Preset]:
    """Name → preset, the packaged ones first; a preset of the same name in a later ``extra_dirs``
    entry (laid out like ``textft/configs``) replaces an earlier one."""
    found: dict[str, Preset] = {}
    for root in (package_dir(), *extra_dirs):
        for k, folder in KINDS.items():
            if kind not in (None, k):
                continue
            where = root / folder if folder else root
            if not where.is_dir():
                continue
            for path in sorted(p for p in where.iterdir() if p.suffix in SUFFIXES and p.is_file()):
                name = f"{folder}/{path.stem}" if folder else path.stem
                found[name] = Preset(name, k, path)
    return found


def find(name: str, kind: str | None = None) -> Preset:
    """The packaged preset ``name`` (``fsdp`` is also found as ``accelerate/fsdp`` when ``kind`` is accelerate)."""
    known = presets(kind)
    folder = KINDS.get(kind or "train")
    for candidate in (name, f"{folder}/{name}" if folder else name):
        if candidate in known:
            return known[candidate]
    raise UserError(f"no preset '{name}'{suggestion(name, known)}; `textft configs list` shows them all",
                    kind="not_found")


def suggestion(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for a preset name, a path or a file name of one."""
    text = str(name).replace("\\", "/")
    stem = text.rsplit("/", 1)[-1]
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    # configs/accelerate/fsdp.yaml and accelerate/fsdp both point at accelerate/fsdp
    parts = text.rsplit("/", 2)
    grouped = f"{parts[-2]}/{stem}" if len(parts) >= 2 else stem
    for candidate in (grouped, stem):
        if candidate in known:
            return f" (did you mean the preset '{candidate}'?)"
    by_stem = {n.rsplit("/", 1)[-1]: n for n in known}
    if stem in by_stem:
        return f" (did you mean the preset '{by_stem[stem]}'?)"
    return closest(stem, known) or closest(stem, by_stem)


def resolve(value: str | Path, kind: str = "train", what: str = "config") -> Path:
    """The file a ``--config`` (or ``--sweep``) value names: an existing file, else a preset."""
    path = Path(value).expanduser()
    known = presets(kind)
    text = str(value)
    folder = KINDS[kind]
    name = text if text in known else f"{folder}/{text}" if folder and f"{folder}/{text}" in known else None
    if path.is_file():
        if name is not None:
            log.warning("%s '%s': using the file %s, not the preset of that name", what, text, path.resolve())
        return path
    if name is not None:
        return known[name].path
    if path.is_dir():
        raise UserError(f"{what} '{text}' is a directory; name a YAML file or a preset{suggestion(text, known)}")
    other = presets()
    hint = suggestion(text, other)
    if hint and (match := other[hint.split("'")[1]]).kind != kind:
        raise UserError(f"{what} '{text}': '{match.name}' is {ARTICLES[match.kind]}, not {ARTICLES[kind]}")
    raise UserError(f"{what} '{text}' does not exist as a file and is not a preset{suggestion(text, known)};"
                    f" `textft configs list` shows the presets", kind="not_found")
