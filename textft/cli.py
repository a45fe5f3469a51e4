"""The ``textft`` command line: every command's arguments and the dispatch to them (the flags they
share and the one error printer are in ``textft.command_line``).

Each command imports the modules it needs when it runs, so that ``textft --help`` stays fast and a
missing optional dependency affects only its own command.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path

from textft.command_line import (add_model_args, check_positive, load_classifier, load_options, quiet_libraries,
                                 run_command)
from textft.errors import UserError, closest

# --- train, evaluate, report, compare, sweep ------------------------------------------------------


def train_main(argv: list[str]) -> int:
    from textft.train import train_command

    return train_command(argv)


def evaluate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="textft evaluate", description="Evaluate a saved classifier.")
    parser.add_argument("--data", required=True, help="labelled .csv/.tsv/.json/.jsonl/.parquet file or hub dataset")
    parser.add_argument("--dataset-config", help="configuration (subset) of a hub dataset that has several")
    parser.add_argument("--split", help="hub split (default: test, else validation)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-pair-column", help="column of the second text (default: as in training)")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--label-delimiter", help="multi-label: separator of labels in one string (default: as in"
                                                  " training)")
    parser.add_argument("--output", help="directory for eval_report.json/.md, predictions and report.html")
    parser.add_argument("--json", action="store_true", help="print the full metrics as JSON")
    add_model_args(parser, batch_size=64, precision="fp32")
    args = parser.parse_args(argv)
    if problems := check_positive(args, ["batch_size", "threads"]):
        raise UserError(problems)
    from textft.evaluation import evaluate_checkpoint
    from textft.tasks import task_class

    quiet_libraries(args.threads)
    metrics = evaluate_checkpoint(args.model, args.data, split=args.split, dataset_config=args.dataset_config,
                                  text_column=args.text_column, label_column=args.label_column,
                                  batch_size=args.batch_size, output=args.output,
                                  text_pair_column=args.text_pair_column, label_delimiter=args.label_delimiter,
                                  **load_options(args))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    task = task_class(metrics["settings"]["task"])
    print(task.markdown_report({"evaluation": metrics}, title=f"{args.model} on {args.data}"))
    s = metrics["settings"]
    window = f", stride {s['stride']}, {s['pooling']} pooling" if s["long_text"] == "sliding_window" else ""
    print(f"long texts: {s['long_text']} at {s['max_length']} tokens{window}; {s['backend']} {s['precision']}")
    print("\n".join(task.summary({"evaluation": metrics})))
    if metrics.get("out_of_scope"):
        from textft.calibration import rejection_lines

        print("out of scope: " + "; ".join(rejection_lines(metrics["out_of_scope"], metrics["settings"]["out_of_scope"])))
    if args.output:
        print(f"report written: {Path(args.output) / 'report.html'} (also report.md, report.json,"
              " eval_report.json, predictions/evaluation.jsonl)")
    return 0


def report_main(argv: list[str]) -> int:
    from textft.report_data import DEFAULT_MISTAKES, check_run_dir
    from textft.tasks import METRIC_NAMES
    from textft.tasks.base import shown as with_interval

    parser = argparse.ArgumentParser(
        prog="textft report", description="(Re-)render report.json, report.md and report.html of finished runs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directory written by textft train")
    parser.add_argument("--mistakes", type=int, default=DEFAULT_MISTAKES,
                        help=f"how many of the most confident mistakes to list (default {DEFAULT_MISTAKES})")
    args = parser.parse_args(argv)
    problems = [p for d in args.run_dirs if (p := check_run_dir(d))]
    if args.mistakes < 0:
        problems.append(f"'--mistakes' must be >= 0, got {args.mistakes}")
    if problems:
        raise UserError(problems)
    from textft.report import write_run_report

    for run_dir in args.run_dirs:
        write_run_report(Path(run_dir), args.mistakes)
        report = json.loads((Path(run_dir) / "report.json").read_text())
        shown = [k for k in report["headline"] if k != "loss"][:2] + ["ece"]
        for split, m in report["splits"].items():
            print(f"{run_dir} {split}: " + "  ".join(f"{METRIC_NAMES[k]} {with_interval(m, k)}" for k in shown
                                                      if isinstance(m.get(k), (int, float))))
        print(f"report written: {Path(run_dir) / 'report.html'} (also report.md, report.json)")
    return 0


def compare_main(argv: list[str]) -> int:
    from textft.compare import METRICS, compare
    from textft.tasks import METRIC_NAMES

    parser = argparse.ArgumentParser(
        prog="textft compare", description="Compare finished runs side by side (Markdown, HTML, CSV and a plot).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by textft train")
    parser.add_argument("--output", help="directory for comparison.md, .html, .csv and .png")
    parser.add_argument("--metric", help=f"metric to rank by (default: the task's): {', '.join(METRICS)}")
    parser.add_argument("--split", help="split to compare (default: test where every run has one, else validation)")
    args = parser.parse_args(argv)
    rows, table, written, metric = compare(args.run_dirs, args.metric, args.split, args.output)
    print(f"# {len(rows)} runs on the {rows[0]['split']} split (best {METRIC_NAMES[metric]} in bold)\n")
    print(table)
    if written:
        print(f"written: {', '.join(str(p) for p in written)}")
    return 0


def sweep_main(argv: list[str]) -> int:
    from textft import sweep

    parser = argparse.ArgumentParser(
        prog="textft sweep", description="Hyper-parameter search with Optuna (TPE sampling, median pruning).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=sweep.__doc__.split("\n", 2)[2])
    parser.add_argument("--config", required=True, help="preset name or YAML config; may hold the sweep section")
    parser.add_argument("--trials", type=int, required=True, help="finished trials wanted in the study (all sessions)")
    parser.add_argument("--output", help="sweep directory (default: the config's output.dir + '-sweep')")
    parser.add_argument("--sweep", dest="sweep_file", help="YAML file or preset (sweeps/default) with the sweep section"
                                                          " (instead of the config's)")
    parser.add_argument("overrides", nargs="*", help="section.key=value pairs applied to every trial")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    try:
        run, study, best_path = sweep.run_sweep(args.config, args.trials, args.output, args.sweep_file, args.overrides)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume the sweep", file=sys.stderr)
        return 130
    rows = sweep.summary_rows(study, run.spec)
    print(f"\n# Sweep: validation {run.spec.metric} ({run.spec.direction}), {len(rows)} trial(s)\n")
    print(sweep.markdown_summary(rows, run.spec))
    best = sweep.best_trial(study)
    if best is None:
        print("no trial finished; nothing to recommend")
        return 1
    print(f"best: trial {best.number}, validation {run.spec.metric} {best.value:.4f}")
    if separable := sweep.runner_up_line(study, run.spec):
        print(separable)
    print(f"best configuration: {best_path}  (train it: textft train --config {best_path})")
    complete = [r["trial"] for r in rows if r["state"] == "complete"]
    print("compare the trials: textft compare " + " ".join(str(run.out_dir / "trials" / f"trial-{n}")
                                                          for n in complete))
    return 0


# --- predict, calibrate, serve, push --------------------------------------------------------------


def predict_main(argv: list[str]) -> int:
    from textft import predict_cli

    return predict_cli.predict_main(argv)


def calibrate_main(argv: list[str]) -> int:
    from textft import calibrate_cli

    return calibrate_cli.calibrate_main(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="textft serve", description="Serve a classifier over HTTP: POST /predict,"
                                     " GET /health, GET /metadata, GET /openapi.json (and /docs with"
                                     " the fastapi-offline package).")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to share its batch")
    parser.add_argument("--max-texts", type=int, default=64, help="texts per request")
    parser.add_argument("--max-chars", type=int, default=20_000, help="characters per text")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="texts that may wait for the model; beyond it requests get 503 with Retry-After")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="seconds a request may wait and run before it gets 503")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    add_model_args(parser, batch_size=None)
    args = parser.parse_args(argv)
    try:
        import uvicorn

        from textft.serving import create_app
    except ImportError:
        raise UserError("textft serve needs FastAPI and uvicorn; install them with: pip install 'textft[serve]'") \
            from None
    problems = [f"'--port' must be in 0..65535, got {args.port}"] if not 0 <= args.port <= 65535 else []
    if args.max_wait_ms < 0:
        problems.append(f"'--max-wait-ms' must be >= 0, got {args.max_wait_ms}")
    if not args.request_timeout > 0:
        problems.append(f"'--request-timeout' must be > 0 seconds, got {args.request_timeout}")
    if problems := problems + check_positive(args, ["max_batch_size", "max_texts", "max_chars", "max_queue", "threads"]):
        raise UserError(problems)
    classifier = load_classifier(args)
    app = create_app(classifier, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     max_texts=args.max_texts, max_chars=args.max_chars, max_queue=args.max_queue,
                     request_timeout_s=args.request_timeout)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}, reachable from other machines; the service has no"
              " authentication, so put it behind a proxy that has", file=sys.stderr)
    print(f"serving {args.model} ({classifier.task.name}, {len(classifier.labels)} labels, {classifier.backend} {classifier.precision},"
          f" {classifier.device})"
          f" on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def push_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft push", description="Upload a trained classifier to the Hugging Face Hub with a model card.",
        epilog="The token comes from HF_TOKEN or `hf auth login`. Resume checkpoints and predictions/ stay local;"
               " what is uploaded names no local path and quotes no evaluation text (see --include-examples).")
    parser.add_argument("--model", required=True, help="output.dir of a textft train run")
    parser.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message")
    parser.add_argument("--license", help="licence for the card (default: the base model's, else 'other')")
    parser.add_argument("--no-card", action="store_true", help="keep the directory's README.md as it is")
    parser.add_argument("--card-only", action="store_true", help="write README.md and print it; upload nothing")
    parser.add_argument("--include-examples", action="store_true",
                        help="publish the report's most confident mistakes, which quote evaluation texts (only if"
                             " the data's licence allows redistributing them)")
    parser.add_argument("--adapter", action="store_true",
                        help="push the LoRA adapter (MODEL/adapter) instead of the merged model: a few MB that peft"
                             " loads on top of the base model (a MODEL that is an adapter directory is pushed so)")
    args = parser.parse_args(argv)
    from textft.model_dir import check_model_dir
    from textft.hub import adapter_to_push, push_to_hub, write_model_card
    from textft.lora import is_adapter_dir

    if args.card_only:
        path, _, _ = check_model_dir(args.model, allow_pickle=True)
        path = adapter_to_push(path) if args.adapter or is_adapter_dir(path) else path
        print(write_model_card(path, license=args.license, repo_id=args.repo_id,
                               include_examples=args.include_examples))
        return 0
    url = push_to_hub(args.model, args.repo_id, private=args.private, commit_message=args.commit_message,
                      write_card=not args.no_card, license=args.license, include_examples=args.include_examples,
                      adapter=args.adapter)
    print(f"pushed {args.model} to https://huggingface.co/{args.repo_id} ({url})")
    return 0


# --- dispatch -------------------------------------------------------------------------------------

def configs_main(argv: list[str]) -> int:
    from textft import configs_cli

    return configs_cli.configs_main(argv)


def service_main(argv: list[str]) -> int:
    from textft.service import commands

    return commands.service_main(argv)


def worker_main(argv: list[str]) -> int:
    from textft.service import commands

    return commands.worker_main(argv)


COMMANDS = {"train": train_main, "evaluate": evaluate_main, "predict": predict_main, "calibrate": calibrate_main,
            "serve": serve_main, "push": push_main, "compare": compare_main, "sweep": sweep_main,
            "report": report_main, "configs": configs_main, "service": service_main, "worker": worker_main}


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
    return run_command(COMMANDS[argv[0]], argv[1:], training=argv[0] in ("train", "sweep"))


if __name__ == "__main__":
    sys.exit(main())
