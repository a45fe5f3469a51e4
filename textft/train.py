"""``textft train``: fine-tune a classifier with ``train(cfg)`` = setup → fit → export
(``textft.training``), the run report rendered into the run directory as it is written, and with
``output.push_to_hub`` the model shared on the Hub.

Also the entry point of ``accelerate launch -m textft.train --config PRESET|FILE [section.key=value ...]``
(or ``accelerate launch textft/train.py ...`` from a checkout), which the service runs for every job
(directly as ``python -m textft.train`` when the job has one process).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from textft.command_line import run_command
from textft.config import Config, load_config
from textft.config_help import describe_keys
from textft.hub import push_problems, push_to_hub
from textft.report import write_run_report
from textft.training import export, fit_run, record_failure, setup


def train(cfg: Config, on_evaluate: Callable[[int, float, dict], None] | None = None) -> dict:
    """Run the whole job described by ``cfg``; returns the final evaluation reports.

    ``on_evaluate(step, epoch, metrics)`` sees every validation result; an exception it raises
    (e.g. a pruned hyper-parameter trial) ends the run.
    """
    # The push comes after the whole run: what would stop it is checked with everything else, before any work.
    run = None
    try:
        publish = push_problems(cfg.output.hub_repo_id, key="output.hub_repo_id") if cfg.output.push_to_hub else []
        run = setup(cfg, publish)
        fit_run(run, on_evaluate)
        reports = export(run, render=write_run_report)
        if cfg.output.push_to_hub and run.accelerator.is_main_process:
            print(f"pushed to {push_to_hub(run.out_dir, cfg.output.hub_repo_id, private=cfg.output.hub_private)}")
    except BaseException as e:
        record_failure(cfg, run, e)
        raise
    return reports


def train_command(argv: list[str]) -> int:
    """``textft train [--config PRESET|FILE] [section.key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="textft train", description="Fine-tune a text classifier.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides (section.key=value):\n" + describe_keys())
    parser.add_argument("--config", help="preset name (textft configs list) or YAML file; a file wins over a preset"
                                         " of the same name")
    parser.add_argument("--no-interpolation", action="store_true",
                        help="read the file and the overrides as plain values: ${...} stays as written instead of"
                             " reading the environment or other settings (the service runs its jobs so)")
    parser.add_argument("overrides", nargs="*", help="section.key=value pairs that win over the file")
    args = parser.parse_args(argv)
    train(load_config(args.config, args.overrides, interpolate=not args.no_interpolation))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``textft train`` (see ``textft.cli``): the entry point of ``accelerate launch``."""
    return run_command(train_command, list(sys.argv[1:] if argv is None else argv), training=True)


if __name__ == "__main__":
    sys.exit(main())
