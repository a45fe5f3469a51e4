"""What every textft command shares: the one place a ``UserError`` becomes ``error: ...`` lines and
exit code 2 (and an interruption exit code 130), and the flags of the commands that load a classifier
(predict, evaluate, calibrate, serve)."""

from __future__ import annotations

import argparse
import logging
import sys

from textft.config import BACKENDS, INFERENCE_PRECISIONS, LONG_TEXT
from textft.errors import UserError
from textft.interrupts import Interrupted, close_progress_bars, report_interruption


def print_problems(e: UserError) -> int:
    """The one error printer: a line per problem on stderr, exit code 2."""
    close_progress_bars()
    for problem in e.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2


def long_text_choice(value: str) -> str:
    from textft.classifier import LONG_TEXT_ALIASES

    return LONG_TEXT_ALIASES.get(value, value)


def add_model_args(parser: argparse.ArgumentParser, batch_size: int | None = 32, precision: str = "auto") -> None:
    """The flags of every command that loads a classifier (predict, evaluate, calibrate, serve)."""
    parser.add_argument("--model", required=True, help="classifier directory (output.dir of textft train) or hub id")
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size, help="texts (or windows) per forward pass")
    parser.add_argument("--long-text", type=long_text_choice, choices=LONG_TEXT, metavar="{" + ",".join(LONG_TEXT) + "}",
                        help="head, tail or head+tail truncation, or sliding_window; default: as in training"
                             " ('truncate' is read as head)")
    parser.add_argument("--stride", type=int, help="sliding_window: tokens shared by consecutive windows"
                                                   " (default: max_length / 4)")
    parser.add_argument("--pooling", choices=("mean", "max"), default="mean",
                        help="sliding_window: how window logits combine")
    parser.add_argument("--max-length", type=int, help="tokens per text or window (default: the training max_length)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default=precision,
                        help="auto: bf16 where the hardware runs it natively, else fp32; int8: dynamic"
                             f" quantisation of the linear layers (CPU); default {precision}")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch, onnx (ONNX Runtime, CPU; exported once, cached next to the model) or auto:"
                             " ONNX Runtime where it keeps every answer (see the README)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's, one per core);"
                                                     " fewer avoids oversubscription when other work shares the cores")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle-format weights (pytorch_model.bin): only for files you trust")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the checkpoint: only for repositories you trust")


def check_positive(args, names: list[str]) -> list[str]:
    return [f"'--{n.replace('_', '-')}' must be >= 1, got {getattr(args, n)}"
            for n in names if getattr(args, n, None) is not None and getattr(args, n) < 1]


def load_options(args) -> dict:
    """``Classifier.from_pretrained`` keyword arguments from the shared model flags."""
    return {"device": args.device, "precision": args.precision, "long_text": args.long_text, "stride": args.stride,
            "max_length": args.max_length, "pooling": args.pooling, "allow_pickle": args.allow_pickle,
            "trust_remote_code": args.trust_remote_code, "backend": args.backend}


def quiet_libraries(threads: int | None = None) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.WARNING)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def load_classifier(args, out_of_scope: bool = True):
    from textft.classifier import Classifier

    quiet_libraries(args.threads)
    return Classifier.from_pretrained(args.model, out_of_scope=out_of_scope, **load_options(args))


def run_command(command, argv: list[str], training: bool = False) -> int:
    """``command(argv)``'s exit code, with the endings every command shares: a UserError prints its
    problems (exit 2), an interruption says what was kept (exit 130)."""
    try:
        return command(argv)
    except UserError as e:
        return print_problems(e)
    except (Interrupted, KeyboardInterrupt) as e:
        return report_interruption(e, training=training)
