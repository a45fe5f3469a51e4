"""Where a classifier runs for prediction (``backend: auto | torch | onnx``) and, on ONNX Runtime,
at which precision: fp32, or int8 (dynamic quantisation of the linear layers) with its measured
agreement with fp32. The export and its cache live in ``textft.onnx_export``.

``auto`` never changes an answer silently:

- it runs ONNX Runtime only on a CPU, with onnxruntime installed, when the precision asked for is
  ``auto`` or ``int8`` (an explicit ``fp32``, ``bf16`` or ``fp16`` is PyTorch's: ``fp32`` is the
  reference numbers of ``textft evaluate``), and for models of at least ``MIN_AUTO_PARAMETERS``;
- with ``precision: auto`` it picks int8 only where int8's answers were measured against fp32's on at
  least ``MIN_VERIFY_TEXTS`` of the run's own validation texts (``predictions/validation.jsonl``) and
  equal them on at least ``AGREEMENT_FLOOR`` of them, and only for tasks whose answers are labels
  (single- and multi-label: regression values always move under int8); else PyTorch, bf16 on CPUs
  that run it natively and fp32 elsewhere (both measured faster than fp32 ONNX Runtime);
- a model that cannot be exported runs on PyTorch with a warning.

An explicit ``onnx`` does what it is asked or says why it cannot (``UserError``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from textft.config import BACKENDS
from textft.errors import UserError
from textft.onnx_export import OnnxRunner, load_or_export

log = logging.getLogger("textft")

AGREEMENT_FLOOR = 0.995
"""Share of validation answers int8 must keep equal to fp32's before ``auto`` chooses it."""
MIN_VERIFY_TEXTS = 200
"""Fewest validation texts int8 must be measured on before ``auto`` chooses it: on fewer, even 100%
agreement says little about a 99.5% floor (at 200, one changed answer is already 99.5%)."""
VERIFY_TEXTS = 500
"""Validation texts an int8 export is measured on (at most)."""
MIN_AUTO_PARAMETERS = 5_000_000
"""Smaller models run on PyTorch under ``auto``: their forward pass costs less than tokenisation,
so an export (seconds, once per model) and a second runtime would buy nothing."""


def unavailable_reason() -> str | None:
    """Why the ONNX backend cannot run here, or None when it can."""
    import sys

    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            missing = module in sys.modules and sys.modules[module] is None or importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            return f"{module} is not installed (pip install 'textft[onnx]')"
    return None


def check_backend(backend: str) -> list[str]:
    from textft.errors import closest

    if backend in BACKENDS:
        return []
    return [f"'--backend' must be one of {', '.join(BACKENDS)}, got '{backend}'{closest(backend, BACKENDS)}"]


def choose_backend(backend: str, precision: str, device, parameters: int) -> str:
    """torch or onnx for a requested backend and precision, on ``device``, for a model of
    ``parameters`` weights; the precision on ONNX Runtime is settled by ``select_onnx``."""
    if backend == "torch":
        return "torch"
    if backend == "onnx":
        if device.type != "cpu":
            raise UserError(f"'--backend': onnx runs on the CPU, not on {device.type}; use --backend torch or auto")
        if precision in ("bf16", "fp16"):
            raise UserError(f"'--backend': onnx runs fp32 or int8, not {precision}; use --backend torch for {precision}")
        if reason := unavailable_reason():
            raise UserError(f"'--backend': onnx is unavailable here: {reason}")
        return "onnx"
    if device.type != "cpu" or precision not in ("auto", "int8") or parameters < MIN_AUTO_PARAMETERS:
        return "torch"
    if reason := unavailable_reason():
        log.info("ONNX Runtime backend unavailable (%s): predicting with PyTorch", reason)
        return "torch"
    return "onnx"


# --- measuring int8 against fp32 ------------------------------------------------------------------


def validation_inputs(model_dir: Path, limit: int = VERIFY_TEXTS) -> dict | None:
    """Texts (and second texts of pairs) with their gold answers from a textft run's validation
    predictions, or None for other checkpoints."""
    path = Path(model_dir) / "predictions" / "validation.jsonl"
    if not path.is_file():
        return None
    texts, pairs, gold = [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                    continue
                texts.append(row["text"])
                pairs.append(row.get("text_pair") if isinstance(row.get("text_pair"), str) else None)
                gold.append(row.get("label", row.get("labels")))
                if len(texts) >= limit:
                    break
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not texts:
        return None
    return {"texts": texts, "pairs": pairs if any(p is not None for p in pairs) else None, "gold": gold}


def compare(task, fp32: np.ndarray, int8: np.ndarray, gold: list) -> dict:
    """int8's answers against fp32's (and both against the gold labels where the task has them)."""
    quality: dict = {"texts": len(fp32), "source": "predictions/validation.jsonl"}
    if not task.answers_are_labels:
        diff = np.abs(fp32 - int8)
        return quality | {"agreement": None, "max_abs_difference": float(diff.max()),
                          "mean_abs_difference": float(diff.mean())}
    a, b = task.answer_keys(fp32), task.answer_keys(int8)
    quality["agreement"] = float(np.mean([x == y for x, y in zip(a, b)]))
    truth = [task.gold_key(g) for g in gold]
    known = [i for i, key in enumerate(truth) if key is not None]
    if known:
        quality["accuracy_fp32"] = float(np.mean([a[i] == truth[i] for i in known]))
        quality["accuracy_int8"] = float(np.mean([b[i] == truth[i] for i in known]))
    return quality


def measure_int8(clf, inputs: dict) -> Callable[[OnnxRunner, OnnxRunner], dict]:
    def verify(fp32_runner: OnnxRunner, int8_runner: OnnxRunner) -> dict:
        texts, pairs = inputs["texts"], inputs["pairs"]
        a = clf.replace(runner=fp32_runner, precision="fp32").logits(texts, pairs=pairs)
        b = clf.replace(runner=int8_runner, precision="int8").logits(texts, pairs=pairs)
        return compare(clf.task, a, b, inputs["gold"])
    return verify


def quality_note(quality: dict | None) -> str:
    """One line on how int8 compares with fp32, for summaries and logs."""
    if not quality:
        return "int8 not verified against fp32 (no validation texts saved with the model)"
    if quality.get("agreement") is None:
        return (f"int8 values differ from fp32 by {quality['mean_abs_difference']:.4g} on average (at most"
                f" {quality['max_abs_difference']:.4g}) on {quality['texts']:,} validation texts")
    acc = ""
    if quality.get("accuracy_fp32") is not None:
        acc = f"; accuracy {quality['accuracy_int8']:.4f} vs {quality['accuracy_fp32']:.4f} in fp32"
    return (f"int8 answers equal to fp32 on {100 * quality['agreement']:.2f}% of {quality['texts']:,} validation"
            f" texts{acc}")


def int8_is_safe(quality: dict | None) -> bool:
    """Whether ``auto`` may choose int8 on this measurement."""
    quality = quality or {}
    return (quality.get("agreement") is not None and quality["agreement"] >= AGREEMENT_FLOOR
            and quality.get("texts", 0) >= MIN_VERIFY_TEXTS)


# --- choosing the precision on ONNX Runtime -------------------------------------------------------------


def select_onnx(clf, requested: str, explicit: bool):
    """``clf`` (a torch fp32 Classifier) moved onto ONNX Runtime for the requested precision, or None
    where PyTorch at that precision is the better choice (see the module) or, without ``explicit``,
    where the export fails (a warning says why)."""
    import torch

    threads = torch.get_num_threads()
    try:
        if requested == "auto":
            chosen = auto_int8(clf, threads)
            if chosen is not None:
                return chosen
            if not explicit:
                # Measured (BENCHMARKS.md): PyTorch beats fp32 ONNX Runtime with bf16 autocast (2.12x
                # against 1.08x the batched pipeline) and at fp32 too (1.28x against 1.15x).
                return None
            requested = "fp32"
        verify = None
        if requested == "int8" and (inputs := validation_inputs(clf.model_dir)) is not None:
            verify = measure_int8(clf, inputs)
        runner, meta = load_or_export(clf.model_dir, requested, clf.model, clf.tokenizer, threads, verify)
        if requested == "int8":
            log.info("%s", quality_note(meta.get("quality")))
        return clf.replace(runner=runner, precision=requested, backend_info=info(meta))
    except UserError:
        raise
    except Exception as e:  # the exporter and onnxruntime raise many types; the message says what failed
        reason = " ".join(str(e).split())[:300]
        if explicit:
            raise UserError(f"'--backend': could not run {clf.model_dir} on ONNX Runtime: {reason}") from None
        log.warning("ONNX Runtime backend unavailable for %s (%s): predicting with PyTorch", clf.model_dir, reason)
        return None


def auto_int8(clf, threads: int):
    """The int8 classifier where ``auto`` may choose it (see the module), else None; the
    measurement is made once per export and kept with it."""
    if not clf.task.answers_are_labels:
        return None
    inputs = validation_inputs(clf.model_dir)
    if inputs is None or len(inputs["texts"]) < MIN_VERIFY_TEXTS:
        found = 0 if inputs is None else len(inputs["texts"])
        log.info("auto precision: not int8 (%d validation texts saved with the model, %d needed to measure it)",
                 found, MIN_VERIFY_TEXTS)
        return None
    runner, meta = load_or_export(clf.model_dir, "int8", clf.model, clf.tokenizer, threads, measure_int8(clf, inputs))
    quality = meta.get("quality")
    if not int8_is_safe(quality):
        log.info("auto precision: not int8 (%s; %.1f%% needed)", quality_note(quality), 100 * AGREEMENT_FLOOR)
        return None
    log.info("auto precision: int8 on ONNX Runtime (%s)", quality_note(quality))
    return clf.replace(runner=runner, precision="int8", backend_info=info(meta))


def info(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("cache", "key", "fused", "quality")}
