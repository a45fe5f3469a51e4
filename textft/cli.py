"""``textft`` command line: one entry point that dispatches to each stage's command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from textft.config import UserError, closest


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="textft evaluate", description="Evaluate a saved classifier.")
    parser.add_argument("--model", required=True, help="directory written by textft train (or any classifier)")
    parser.add_argument("--data", required=True, help="labelled .csv/.tsv/.json/.jsonl/.parquet file or hub dataset")
    parser.add_argument("--split", help="hub split (default: test, else validation)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, help="default: the training max_length")
    parser.add_argument("--truncation", choices=["head", "tail", "head+tail"], help="default: as in training")
    parser.add_argument("--output", help="directory for eval_report.json / eval_report.md")
    parser.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    args = parser.parse_args(argv)
    from textft.evaluation import evaluate_checkpoint, markdown_report, summary_line

    metrics = evaluate_checkpoint(args.model, args.data, args.split, args.text_column, args.label_column,
                                  args.batch_size, args.max_length, args.truncation, args.output)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(markdown_report({"evaluation": metrics}, title=f"{args.model} on {args.data}"))
        print(summary_line("evaluation", metrics))
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
