"""IMDB star ratings as regression: textft (MiniLM, the imdb-rating-minilm preset) against a TF-IDF +
ridge baseline (scikit-learn), trained and scored on the same reviews in one run.

    python benchmarks/regression_imdb.py                     # 2,000 train / 500 validation / 1,000 test reviews
    python benchmarks/regression_imdb.py --seed 7            # another sample of the 25,000
    python benchmarks/regression_imdb.py --quick             # tiny model, a few dozen reviews: proves it runs

The reviews come from ``imdb/train.jsonl`` of the benchmark data (the aclImdb train split, whose
``rating`` field holds the stars: 1-4 and 7-10). One seeded shuffle gives three disjoint samples:
train, validation (textft picks its best checkpoint on it, the baseline its ridge alpha) and test
(held out, scored once by both). The baseline gets every advantage a careful user would give it:
``<br />`` tags removed, word uni- and bigrams with sublinear tf, alpha chosen on validation,
predictions clipped to the rating range. textft trains on the raw reviews with the auto recipe.

The last line is machine-readable:

    textft_mae=X ridge_mae=Y textft_spearman=Z ridge_spearman=W beats_baseline=true|false
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def quick_reviews() -> list[dict]:
    """Without the benchmark data (a clean CI checkout): the bundled reviews with made-up ratings."""
    rng = random.Random(0)
    rows = []
    for split in ("train", "validation", "test"):
        for r in read_jsonl(ROOT / "textft/assets/quickstart" / f"{split}.jsonl"):
            rows.append({"text": r["text"], "rating": rng.choice([7, 8, 9, 10] if r["label"] == "pos" else [1, 2, 3, 4])})
    return rows


def samples(args) -> dict[str, list[dict]]:
    path = Path(args.data)
    if not path.is_file() and not args.quick:
        sys.exit(f"no file {path}: pass --data with the aclImdb train reviews (text, rating) as JSON Lines")
    rows = read_jsonl(path) if path.is_file() else quick_reviews()
    random.Random(args.seed).shuffle(rows)  # the file is sorted by label
    n = (args.train, args.validation, args.test)
    if sum(n) > len(rows):
        sys.exit(f"{path} has {len(rows)} reviews, fewer than the {sum(n)} asked for")
    cut = np.cumsum((0, *n))
    return {split: [{"text": r["text"], "rating": float(r["rating"])} for r in rows[cut[i]:cut[i + 1]]]
            for i, split in enumerate(("train", "validation", "test"))}


def write_splits(data: dict[str, list[dict]], workdir: Path) -> dict[str, Path]:
    paths = {}
    for split, rows in data.items():
        paths[split] = workdir / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def scores(pred, true) -> dict[str, float]:
    """The same metric module textft reports with."""
    from textft.metric_modules import load_metric

    m = load_metric("regression").compute(predictions=list(map(float, pred)), references=list(map(float, true)))
    return {k: m[k] for k in ("mae", "rmse", "r2", "pearson", "spearman")}


def ridge_baseline(data: dict[str, list[dict]]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge

    def texts(split):
        return [r["text"].replace("<br />", " ") for r in data[split]]

    def ratings(split):
        return np.array([r["rating"] for r in data[split]])

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(texts("train"))
    x_val, x_test = vectorizer.transform(texts("validation")), vectorizer.transform(texts("test"))
    low, high = ratings("train").min(), ratings("train").max()
    fitted = {a: Ridge(alpha=a).fit(x_train, ratings("train")) for a in ALPHAS}
    val_mae = {a: np.abs(np.clip(m.predict(x_val), low, high) - ratings("validation")).mean() for a, m in fitted.items()}
    alpha = min(val_mae, key=val_mae.get)
    pred = np.clip(fitted[alpha].predict(x_test), low, high)
    return {**scores(pred, ratings("test")), "seconds": time.perf_counter() - start, "alpha": alpha,
            "features": x_train.shape[1]}


def textft_run(paths: dict[str, Path], out_dir: Path, quick: bool) -> dict:
    from textft.config import load_config
    from textft.train import train

    overrides = [f"data.train_file={paths['train']}", f"data.validation_file={paths['validation']}",
                 f"data.test_file={paths['test']}", "data.max_train_samples=null", "data.max_eval_samples=null",
                 f"output.dir={out_dir}", "output.overwrite=true"]
    if quick:
        overrides += ["model.name_or_path=builtin:tiny-bert", "model.random_init=true", "data.max_length=64",
                      "train.max_steps=10", "train.mixed_precision=fp32"]
    start = time.perf_counter()
    reports = train(load_config("imdb-rating-minilm", overrides))
    wall = time.perf_counter() - start
    report = json.loads((out_dir / "eval_report.json").read_text())
    test = reports["test"]
    return {**{k: test[k] for k in ("mae", "rmse", "r2", "pearson", "spearman")}, "seconds": report["train_seconds"],
            "wall": wall, "steps": report["optimizer_steps"], "validation": reports["validation"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/imdb/train.jsonl"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", help="textft's run directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 60 / 30 / 30 reviews")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.validation, args.test = 60, 30, 30
    data = samples(args)
    with tempfile.TemporaryDirectory(prefix="textft-imdb-rating-") as tmp:
        paths = write_splits(data, Path(tmp))
        ridge = ridge_baseline(data)
        ours = textft_run(paths, Path(args.output) if args.output else Path(tmp) / "run", args.quick)
    n = {split: len(rows) for split, rows in data.items()}
    print(f"\nIMDB ratings, seed {args.seed}: {n['train']} train / {n['validation']} validation / {n['test']} test reviews")
    print("| model | test MAE | RMSE | R² | Pearson | Spearman | training |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r, time_note in (
            (f"TF-IDF + ridge (alpha {ridge['alpha']:g}, {ridge['features']:,} features)", ridge, f"{ridge['seconds']:.1f} s"),
            (f"textft {'tiny random BERT' if args.quick else 'MiniLM'} ({ours['steps']} steps)", ours, f"{ours['seconds']:.0f} s ({ours['wall']:.0f} s wall)")):
        print(f"| {name} | " + " | ".join(fmt(r[k]) for k in ("mae", "rmse", "r2", "pearson", "spearman"))
              + f" | {time_note} |")
    beats = ours["mae"] < ridge["mae"] and (ours["spearman"] or -1) > (ridge["spearman"] or -1)
    print(f"textft_mae={ours['mae']:.4f} ridge_mae={ridge['mae']:.4f} textft_spearman={ours['spearman'] or 0:.4f}"
          f" ridge_spearman={ridge['spearman'] or 0:.4f} beats_baseline={'true' if beats else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
