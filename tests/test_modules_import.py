"""Every module of the package imports on its own, in a fresh interpreter, without the network: the
fast tier (``-m "not slow"``) reaches every module at least this far, and a module that only works
after another happened to be imported first fails here, not in a user's process."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import textft

ROOT = Path(textft.__file__).resolve().parent

# Entry points that act when imported (``python -m textft``) are imported through their parents.
ACTS_ON_IMPORT = {"textft.__main__"}


def modules() -> list[str]:
    found = ["textft"]
    for info in pkgutil.walk_packages([str(ROOT)], prefix="textft."):
        found.append(info.name)
    return sorted(set(found) - ACTS_ON_IMPORT)


def test_the_walk_finds_every_python_file():
    # textft/metrics holds `evaluate` metric scripts, loaded by path (metric_modules.py), not imported.
    files = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
             for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] != "metrics"}
    assert files - ACTS_ON_IMPORT == set(modules())


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module would cost a second each; one that imports each module after
    # forgetting every textft module the previous one loaded is as strict and ten times faster.
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'textft' or m.startswith('textft.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    proc = subprocess.run([sys.executable, "-c", script, *modules()], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_the_upload_checker_and_the_service_facade_load_without_torch():
    # Each upload-checking process runs under a memory limit of its own: torch alone would take a
    # large part of it before the first byte of the upload is read.
    proc = subprocess.run([sys.executable, "-c", "import sys, textft.service.checks, textft.service.textft_api;"
                           " print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
