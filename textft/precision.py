"""Numeric precision, one vocabulary for training and inference: ``auto | fp32 | bf16 | fp16``
(inference adds ``int8``, dynamic quantisation on CPU). ``auto`` is bf16 where the hardware runs it
natively (most GPUs, CPUs with AVX-512-bf16 or AMX), fp16 on older GPUs, else fp32."""

from __future__ import annotations

import logging
import os

from textft.config import INFERENCE_PRECISIONS
from textft.errors import UserError, closest

log = logging.getLogger("textft")

ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
"""Accelerate's names for them (``mixed_precision="no"`` is fp32)."""


def cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def training_precision(requested: str) -> str:
    """fp32, bf16 or fp16 for a training run; ``auto`` follows ``accelerate launch --mixed_precision``
    when it was given, else the hardware."""
    if requested != "auto":
        return requested
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched:
        return {"no": "fp32"}.get(launched, launched)
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def inference_precision(precision: str, device) -> str:
    """What runs on ``device`` for the requested precision; impossible combinations are an error."""
    import torch

    if precision not in INFERENCE_PRECISIONS:
        raise UserError(f"'--precision' must be one of {', '.join(INFERENCE_PRECISIONS)}, got '{precision}'"
                        f"{closest(precision, INFERENCE_PRECISIONS)}")
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "int8":
            raise UserError("'--precision': int8 dynamic quantisation runs on CPU only; on a GPU use bf16 or fp16")
        return precision
    if device.type != "cpu" and precision == "int8":
        raise UserError(f"'--precision': int8 dynamic quantisation runs on CPU only, not on {device.type}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UserError("'--precision': fp16 runs on GPUs only; on a CPU use bf16 (where supported), int8 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log.warning("this CPU has no native bf16 (AVX-512-BF16/AMX): bf16 will be emulated and slow")
    return precision
