"""``textft`` command line: one entry point that dispatches to each stage's command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from textft.config import UserError, closest


def evaluate_main(argv: list[str]) -> int:
    from textft.inference import LONG_TEXT, POOLING, PRECISIONS

    parser = argparse.ArgumentParser(prog="textft evaluate", description="Evaluate a saved classifier.")
    parser.add_argument("--model", required=True, help="directory written by textft train (or any classifier)")
    parser.add_argument("--data", required=True, help="labelled .csv/.tsv/.json/.jsonl/.parquet file or hub dataset")
    parser.add_argument("--split", help="hub split (default: test, else validation)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=64, help="texts (or windows) per forward pass")
    parser.add_argument("--max-length", type=int, help="tokens per text or window (default: the training max_length)")
    parser.add_argument("--long-text", choices=LONG_TEXT,
                        help="truncate (keep the head), head+tail, or sliding_window; default: as in training")
    parser.add_argument("--stride", type=int, help="sliding_window: tokens shared by consecutive windows"
                                                   " (default: max_length / 4)")
    parser.add_argument("--pooling", choices=POOLING, default="mean", help="sliding_window: how window logits combine")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default: reproduces training numbers), auto, bf16, fp16, int8")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--output", help="directory for eval_report.json/.md, predictions and report.html")
    parser.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle-format weights (pytorch_model.bin): only for files you trust")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the checkpoint: only for repositories you trust")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"'--batch-size' must be >= 1, got {args.batch_size}")
    from textft.evaluation import evaluate_checkpoint, markdown_report, summary_line
    from textft.inference import _quiet_libraries

    _quiet_libraries()
    metrics = evaluate_checkpoint(args.model, args.data, args.split, args.text_column, args.label_column,
                                  args.batch_size, args.max_length, args.long_text, args.stride, args.pooling,
                                  args.precision, args.device, args.output, args.allow_pickle,
                                  args.trust_remote_code)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(markdown_report({"evaluation": metrics}, title=f"{args.model} on {args.data}"))
        s = metrics["settings"]
        window = f", stride {s['stride']}, {s['pooling']} pooling" if s["long_text"] == "sliding_window" else ""
        print(f"long texts: {s['long_text']} at {s['max_length']} tokens{window}; precision {s['precision']}")
        print(summary_line("evaluation", metrics))
        if args.output:
            print(f"report written: {Path(args.output) / 'report.html'} (also report.md, report.json,"
                  " eval_report.json, predictions/evaluation.jsonl)")
    return 0


# Each command lives in the module of its stage and is imported only when used, so that
# `textft --help` stays fast and a missing optional dependency affects only its own command.
COMMANDS = {
    "train": "textft.train:main",
    "evaluate": "textft.cli:evaluate_main",
    "predict": "textft.inference:predict_main",
    "calibrate": "textft.inference:calibrate_main",
    "serve": "textft.serving:main",
    "push": "textft.hub:push_main",
    "compare": "textft.compare:main",
    "sweep": "textft.sweep:main",
    "report": "textft.report:main",
    "service": "textft.service.commands:service_main",
    "worker": "textft.service.commands:worker_main",
}


def _command(name: str):
    module, func = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: textft {{{','.join(COMMANDS)}}} [options]   (textft COMMAND --help for details)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}'{closest(argv[0], COMMANDS)}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return _command(argv[0])(argv[1:])
    except UserError as e:
        for problem in e.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
