"""``textft calibrate``: its arguments, and the work for a single-label model: every out-of-scope score
measured on ``--data`` (the feature scores fitted on the training data: the run's own training split, or
``--train-data``), one kept with its threshold and stored with the model, and the run's report updated.
A multi-label model's decision thresholds are chosen again by ``textft.calibration``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from textft import calibration
from textft.calibration import DEFAULT_OOS_LABEL, OOS_KEY
from textft.command_line import add_model_args, check_positive, load_classifier
from textft.errors import UserError


def calibrate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft calibrate",
        description="Choose the out-of-scope score and the threshold below which predictions are answered with an"
                    " out-of-scope label, on labelled validation data, and store them with the model. For a"
                    " multi-label model: choose its decision thresholds again on new labelled data.",
        epilog="Rows whose label is not one of the model's labels count as out of scope. Default target:"
               " --target-rejection 0.05 (5%% of in-scope examples rejected). --method auto measures every score"
               " and keeps the one that rejects the most out-of-scope rows of --data at the target (without"
               " such rows: mahalanobis, the default). The feature scores (mahalanobis, knn) are fitted on"
               " the training data: the run's own training split, or --train-data. A regression model has"
               " nothing to calibrate.")
    parser.add_argument("--data", required=True, help="labelled validation file (csv, tsv, jsonl, parquet)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--method", choices=("auto", *calibration.OOS_METHODS), default="auto",
                        help="auto (default): measure all and pick; msp: maximum softmax probability; energy:"
                             " logsumexp of the logits; mahalanobis: distance to the class means of the training"
                             " features; knn: cosine similarity to the nearest training examples")
    parser.add_argument("--train-data", help="labelled training file the feature scores are fitted on (default: the"
                                             " run's training split); same columns as --data")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-precision", type=float, help="answered predictions at least this precise")
    target.add_argument("--target-rejection", type=float, help="reject this fraction of in-scope examples")
    parser.add_argument("--label", help="label answered below the threshold (default: the model's own, e.g. its"
                                        f" data.oos_label, else {calibration.DEFAULT_OOS_LABEL})")
    parser.add_argument("--dry-run", action="store_true", help="print the threshold without writing it")
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the threshold already stored in the model on --data (e.g. a test file)")
    parser.add_argument("--thresholds", choices=("per_label", "global"),
                        help="multi-label: one threshold per label (best macro-F1) or one for all (default: as stored)")
    parser.add_argument("--text-pair-column", help="multi-label: column of the second text of a pair model")
    add_model_args(parser)
    args = parser.parse_args(argv)
    if problems := check_positive(args, ["batch_size", "threads"]):
        raise UserError(problems)
    from textft.model_dir import check_model_dir

    _, raw_config, _ = check_model_dir(args.model, args.allow_pickle, args.trust_remote_code)
    if calibration.check_calibration(args, raw_config) == "thresholds":
        lines = calibration.calibrate_thresholds(load_classifier(args), args)
    else:
        lines = calibrate_out_of_scope(args, raw_config)
    print("\n".join(lines))
    return 0


def calibrate_out_of_scope(args, raw_config: dict) -> list[str]:
    """Single-label: measure every out-of-scope score on ``--data``, keep one with its threshold (unless
    --dry-run) or, with --evaluate, measure the stored one; returns the lines to print."""
    from textft.prediction_files import read_labelled

    if args.target_precision is None and args.target_rejection is None:
        args.target_rejection = 0.05
    if args.evaluate and raw_config.get(OOS_KEY) is None:
        raise UserError(f"'--evaluate': '{args.model}' has no out-of-scope threshold yet; run textft calibrate first")
    texts, labels = read_labelled(args.data, args.text_column, args.label_column)
    if args.backend == "auto" and not args.evaluate and args.method not in calibration.LOGIT_METHODS:
        args.backend = "torch"  # the feature scores read what the ONNX export does not give
    clf = load_classifier(args, out_of_scope=args.evaluate)
    stored = raw_config.get(OOS_KEY) if isinstance(raw_config.get(OOS_KEY), dict) else {}
    args.label = args.label or stored.get("label") or clf.trained_setting("oos_label") or DEFAULT_OOS_LABEL
    if args.evaluate:
        measured = calibration.measure_threshold(clf, texts, labels, args.batch_size)
        return calibration.rejection_lines(measured, clf.out_of_scope["method"])
    started = time.perf_counter()
    train, note = training_data(clf, args) if args.method not in calibration.LOGIT_METHODS else \
        (None, f"feature scores not measured: --method {args.method} reads the logits only")
    settings, statistics = calibration.calibrate(
        clf, texts, labels, args.method, args.target_precision, args.target_rejection, args.label, args.batch_size,
        train=train, source=Path(args.data).name)
    cal = settings["calibration"]
    lines = [note, "", *calibration.method_table(cal["methods"], settings["method"]), "",
             f"chosen: {settings['method']} ({cal['chosen_because']}); {time.perf_counter() - started:.0f} s",
             *calibration.rejection_lines(cal, settings["method"])]
    if args.dry_run:
        return lines
    calibration.write_settings(clf.model_dir, settings, statistics)
    lines.append(f"wrote '{OOS_KEY}' to {calibration.settings_file(clf.model_dir)}: predict and serve now answer"
                 f" '{args.label}' below the threshold")
    if (clf.model_dir / "eval_report.json").is_file():
        from textft.report import write_run_report

        write_run_report(clf.model_dir)
        lines.append(f"report updated: {clf.model_dir / 'report.html'}")
    return lines


def training_data(clf, args) -> tuple[tuple[list[str], list] | None, str]:
    """The texts and labels the feature scores are fitted on: ``--train-data``, else the training split
    of the run that trained the model (as it was carved then); None, and why, when neither is there."""
    from textft.prediction_files import read_labelled

    if args.train_data:
        try:
            texts, labels = read_labelled(args.train_data, args.text_column, args.label_column)
        except UserError as e:
            raise UserError([p.replace("'--data'", "'--train-data'") for p in e.problems]) from None
        return (texts, labels), f"feature scores fitted on {len(texts):,} texts of {Path(args.train_data).name}"
    cfg = clf.training_config
    if not isinstance(cfg.get("data"), dict):
        return None, "feature scores not measured: the model is not a textft run; pass --train-data FILE"
    try:
        texts, labels = run_training_split(cfg, clf.model_dir)
    except UserError as e:
        return None, (f"feature scores not measured: the run's training data cannot be read here"
                      f" ({e.problems[0]}); pass --train-data FILE")
    return (texts, labels), f"feature scores fitted on the run's {len(texts):,} training texts"


def run_training_split(cfg: dict, model_dir: Path) -> tuple[list[str], list]:
    """Texts and label names of the training split of a saved run config (its validation carved
    out again with the run's seed; known out-of-scope rows keep their label). A relative file path is
    read from the current directory, else from the model directory's parent (where the service keeps
    a job's files)."""
    import dataclasses

    from textft.config import DataConfig
    from textft.data import load_splits

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    data = DataConfig(**{k: v for k, v in cfg["data"].items() if k in fields})
    for key in ("train_file", "validation_file"):
        path = getattr(data, key)
        if path and not Path(path).is_absolute() and not Path(path).exists() and (model_dir.parent / path).exists():
            setattr(data, key, str(model_dir.parent / path))
    if data.text_pair_column:
        raise UserError("out-of-scope feature scores read single texts; this model reads text pairs")
    data.test_file, data.max_eval_samples = None, None
    seed = (cfg.get("train") or {}).get("seed", 42)
    loaded = load_splits(data, seed if isinstance(seed, int) else 42)
    names, train = loaded.label_names, loaded.splits["train"]
    oos = data.oos_label or DEFAULT_OOS_LABEL
    return list(train["text"]), [names[i] if i >= 0 else oos for i in train["labels"]]
