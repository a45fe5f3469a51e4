"""Prediction with a saved classifier: batched inference, long texts, out-of-scope rejection.

``Classifier.from_pretrained(DIR).predict(texts)`` is the Python API (also ``textft.load``);
``textft predict`` scores files in bounded memory and ``textft calibrate`` picks the threshold
below which predictions are answered with an out-of-scope label.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from textft.config import UserError, closest

log = logging.getLogger("textft")

LONG_TEXT = ("truncate", "head+tail", "sliding_window")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
POOLING = ("mean", "max")
OOS_KEY = "textft_out_of_scope"
OOS_METHODS = ("msp", "energy")
DEFAULT_OOS_LABEL = "out_of_scope"
INPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet", ".txt": "txt", ".text": "txt"}
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
DEFAULT_MAX_CHARS = 1_000_000


# --- loading ----------------------------------------------------------------------------------


def _one_line(e: BaseException, limit: int = 300) -> str:
    return " ".join(str(e).split())[:limit]


def check_model_dir(model_dir: str | Path, allow_pickle: bool = False, key: str = "--model") -> tuple[Path, dict, bool]:
    """The model directory, its config.json and whether its weights are safetensors; refuses
    anything that is not a sequence classifier, and pickle weights unless ``allow_pickle``."""
    path = Path(model_dir).expanduser()
    if not path.exists():
        raise UserError(f"'{key}': directory '{model_dir}' does not exist")
    if not path.is_dir():
        raise UserError(f"'{key}': '{model_dir}' is a file, not a model directory")
    if not (path / "config.json").is_file():
        raise UserError(f"'{key}': '{model_dir}' is not a saved model directory (no config.json);"
                        " pass the output.dir of a textft train run")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{key}': '{path / 'config.json'}' is not valid JSON: {_one_line(e)}") from None
    if not isinstance(config, dict):
        raise UserError(f"'{key}': '{path / 'config.json'}' must hold a JSON object")
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"'{key}': '{model_dir}' is not a text classifier (architectures: {', '.join(archs) or 'none'});"
                        " expected a *ForSequenceClassification checkpoint such as textft train writes")
    if config.get("problem_type") in ("regression", "multi_label_classification") or config.get("num_labels") == 1:
        raise UserError(f"'{key}': '{model_dir}' is a {config.get('problem_type') or 'regression'} model;"
                        " textft predicts single-label classes")
    safetensors = any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
    pickled = any((path / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json"))
    if not safetensors and not pickled:
        raise UserError(f"'{key}': '{model_dir}' has no weights (model.safetensors)")
    if not safetensors and not allow_pickle:
        raise UserError(f"'{key}': '{model_dir}' holds only pickle-format weights (pytorch_model.bin), which can"
                        " run arbitrary code when loaded; convert them to safetensors, or pass --allow-pickle"
                        " (allow_pickle=True) if you trust where they came from")
    return path, config, safetensors


def _training_config(path: Path) -> dict:
    """The resolved config a textft run saved next to the model ({} for other checkpoints)."""
    import yaml

    file = path / "textft_config.yaml"
    if not file.is_file():
        return {}
    try:
        cfg = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        log.warning("ignoring unreadable %s: %s", file, _one_line(e))
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _cpu_supports_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device) -> str:
    """``auto`` → bf16 on GPUs and CPUs that run it natively (fp16 on older GPUs), else fp32."""
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"'--precision' must be one of {', '.join(PRECISIONS)}, got '{precision}'"
                        f"{closest(precision, PRECISIONS)}")
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if precision == "int8":
            raise UserError("'--precision': int8 dynamic quantisation runs on CPU only; on a GPU use bf16 or fp16")
        return precision
    if device.type != "cpu" and precision == "int8":
        raise UserError(f"'--precision': int8 dynamic quantisation runs on CPU only, not on {device.type}")
    if precision == "auto":
        return "bf16" if device.type == "cpu" and _cpu_supports_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UserError("'--precision': fp16 runs on GPUs only; on a CPU use bf16 (where supported), int8 or fp32")
    if precision == "bf16" and device.type == "cpu" and not _cpu_supports_bf16():
        log.warning("this CPU has no native bf16 (AVX-512-BF16/AMX): bf16 will be emulated and slow")
    return precision


def _check_out_of_scope(settings: Any, where: str) -> dict | None:
    if settings is None:
        return None
    problems = []
    if not isinstance(settings, dict):
        raise UserError(f"{where}: '{OOS_KEY}' must be a mapping, got {settings!r}")
    if settings.get("method") not in OOS_METHODS:
        problems.append(f"{where}: '{OOS_KEY}.method' must be one of {', '.join(OOS_METHODS)},"
                        f" got {settings.get('method')!r}")
    threshold = settings.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        problems.append(f"{where}: '{OOS_KEY}.threshold' must be a number, got {threshold!r}")
    if not isinstance(settings.get("label", DEFAULT_OOS_LABEL), str):
        problems.append(f"{where}: '{OOS_KEY}.label' must be a string, got {settings.get('label')!r}")
    if problems:
        raise UserError(problems)
    return {"label": DEFAULT_OOS_LABEL, "temperature": 1.0, **settings}


# --- scores -------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def oos_scores(logits: np.ndarray, method: str, temperature: float = 1.0) -> np.ndarray:
    """In-scope confidence of each row: maximum softmax probability (Hendrycks & Gimpel 2017) or
    negative energy T·logsumexp(logits/T) (Liu et al. 2020); higher means more in scope."""
    logits = np.asarray(logits, dtype=np.float64)
    if method == "msp":
        return softmax(logits / temperature).max(-1)
    if method == "energy":
        z = logits / temperature
        m = z.max(-1)
        return temperature * (m + np.log(np.exp(z - m[:, None]).sum(-1)))
    raise UserError(f"'--method' must be one of {', '.join(OOS_METHODS)}, got '{method}'{closest(method, OOS_METHODS)}")


# --- the classifier -----------------------------------------------------------------------------


class Classifier:
    """A saved sequence classifier ready for fast prediction.

    Texts are encoded, sorted by length and batched so that padding stays small; the model runs
    under ``torch.inference_mode`` in the chosen precision. Long texts are truncated (the head,
    or head+tail) or split into overlapping windows whose logits are pooled.
    """

    def __init__(self, model, tokenizer, *, device, precision: str, long_text: str, max_length: int,
                 stride: int, head_fraction: float = 0.25, pooling: str = "mean", out_of_scope: dict | None = None,
                 model_dir: Path | None = None, training_config: dict | None = None, mode: str = "head"):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.long_text, self.max_length, self.stride, self.pooling = long_text, max_length, stride, pooling
        self.head_fraction, self.mode = head_fraction, mode
        self.out_of_scope = out_of_scope
        self.model_dir, self.training_config = model_dir, training_config or {}
        config = getattr(model, "config", None)
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        from textft.tokenization import collator

        self._collate = collator(tokenizer, mixed_precision=precision != "fp32", on_gpu=device.type == "cuda")

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | None = None, precision: str = "auto",
                        long_text: str | None = None, stride: int | None = None, max_length: int | None = None,
                        pooling: str = "mean", allow_pickle: bool = False, trust_remote_code: bool = False,
                        out_of_scope: bool = True) -> "Classifier":
        """Load a classifier directory (a textft run or any ``*ForSequenceClassification`` checkpoint).

        device: ``cuda`` when available, else ``cpu`` by default. precision: auto (bf16 where the
        hardware runs it natively), fp32, bf16, fp16 (GPU), int8 (dynamic quantisation, CPU).
        long_text: truncate (keep the head), head+tail, or sliding_window with ``stride`` tokens
        shared by consecutive windows (default a quarter of ``max_length``); by default the
        truncation the model was trained with. max_length: tokens per text or window, by default
        the training max_length. pooling: how window logits combine (mean or max).
        out_of_scope: apply the threshold stored by ``textft calibrate``, if any.
        """
        import torch

        problems = []
        if long_text is not None and long_text not in LONG_TEXT:
            problems.append(f"'--long-text' must be one of {', '.join(LONG_TEXT)}, got '{long_text}'"
                            f"{closest(long_text, LONG_TEXT)}")
        if pooling not in POOLING:
            problems.append(f"'--pooling' must be one of {', '.join(POOLING)}, got '{pooling}'{closest(pooling, POOLING)}")
        if precision not in PRECISIONS:
            problems.append(f"'--precision' must be one of {', '.join(PRECISIONS)}, got '{precision}'"
                            f"{closest(precision, PRECISIONS)}")
        if max_length is not None and max_length < 8:
            problems.append(f"'--max-length' must be >= 8, got {max_length}")
        if stride is not None and stride < 0:
            problems.append(f"'--stride' must be >= 0, got {stride}")
        if problems:
            raise UserError(problems)
        path, raw_config, safetensors = check_model_dir(model_dir, allow_pickle)
        oos = _check_out_of_scope(raw_config.get(OOS_KEY), f"'{path / 'config.json'}'") if out_of_scope else None
        trained = _training_config(path)
        data_cfg = trained.get("data") if isinstance(trained.get("data"), dict) else {}

        try:
            device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as e:
            raise UserError(f"'--device': {_one_line(e)}") from None
        if device_t.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"'--device': '{device}' requested but no CUDA GPU is available")
        precision = resolve_precision(precision, device_t)

        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hint = "" if trust_remote_code else " (if it needs its own code and you trust it, pass --trust-remote-code)"
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a loading bar per model is noise in a service's log
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, use_safetensors=safetensors)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"'--model': could not load '{model_dir}': {_one_line(e)}{hint}") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model.eval()

        limit = min(int(getattr(model.config, "max_position_embeddings", 512) or 512),
                    int(tokenizer.model_max_length) if tokenizer.model_max_length < 1e9 else 512)
        trained_length = data_cfg.get("max_length")
        max_length = max_length or (trained_length if isinstance(trained_length, int) else None) or min(limit, 512)
        if max_length > limit:
            raise UserError(f"'--max-length' {max_length} exceeds what the model accepts ({limit} tokens)")
        trained_mode = data_cfg.get("truncation", "head")
        if long_text is None:
            mode = trained_mode if trained_mode in ("head", "tail", "head+tail") else "head"
            long_text = "head+tail" if mode == "head+tail" else "truncate"
        else:
            mode = {"truncate": "head", "head+tail": "head+tail", "sliding_window": "window"}[long_text]
        if long_text == "sliding_window":
            if not tokenizer.is_fast:
                raise UserError("'--long-text': sliding_window needs a fast (Rust) tokenizer, and this model has none")
            specials = tokenizer.num_special_tokens_to_add(pair=False)
            stride = max_length // 4 if stride is None else stride
            if stride >= max_length - specials:
                raise UserError(f"'--stride' {stride} must be smaller than the window's {max_length - specials}"
                                f" text tokens (max_length {max_length} minus {specials} special tokens)")
        else:
            stride = stride or 0

        model.to(device_t)
        if precision in ("bf16", "fp16") and device_t.type != "cpu":
            model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision == "int8":
            from torch import nn

            with warnings.catch_warnings():
                # torch.ao.quantization is deprecated in favour of torchao; it still works and
                # needs no extra dependency.
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        head_fraction = data_cfg.get("head_fraction", 0.25)
        return cls(model, tokenizer, device=device_t, precision=precision, long_text=long_text,
                   max_length=max_length, stride=stride, head_fraction=head_fraction, pooling=pooling,
                   out_of_scope=oos, model_dir=path, training_config=trained, mode=mode)

    # -- encoding and forward ------------------------------------------------------------------

    def _features(self, texts: list[str]) -> tuple[list[dict], np.ndarray]:
        """Model inputs of every feature (one per text, or one per window) and the text it belongs to."""
        from textft.tokenization import MODEL_INPUTS, encode_texts

        if self.mode == "window":
            enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, stride=self.stride,
                                 return_overflowing_tokens=True, verbose=False)
            owner = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        else:
            enc = encode_texts(texts, self.tokenizer, self.max_length, self.mode, self.head_fraction)
            owner = np.arange(len(texts))
        keys = [k for k in MODEL_INPUTS if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(owner))], owner

    def _autocast(self):
        import torch

        if self.precision == "bf16" and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits of each text (pooled over its windows with ``sliding_window``), float32, in input order."""
        import torch

        texts = _check_texts(texts)
        if batch_size < 1:
            raise UserError(f"'--batch-size' must be >= 1, got {batch_size}")
        n_labels = len(self.labels)
        if not texts:
            return np.zeros((0, n_labels), dtype=np.float32)
        feats, owner = self._features(texts)
        # Longest first: padding stays small, and the peak memory shows up in the first batch.
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        out = np.empty((len(feats), n_labels), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = {k: v.to(self.device) for k, v in self._collate([feats[i] for i in idx]).items()}
                out[idx] = self.model(**batch).logits.float().cpu().numpy()
        if self.mode != "window":
            return out
        counts = np.bincount(owner, minlength=len(texts)).astype(np.float32)[:, None]
        if self.pooling == "max":
            pooled = np.full((len(texts), n_labels), -np.inf, dtype=np.float32)
            np.maximum.at(pooled, owner, out)
            return pooled
        pooled = np.zeros((len(texts), n_labels), dtype=np.float32)
        np.add.at(pooled, owner, out)
        return pooled / counts

    # -- results ---------------------------------------------------------------------------------

    def results(self, logits: np.ndarray, top_k: int = 1, return_all_scores: bool = False) -> list[dict]:
        """One record per row of ``logits``: label and score (max softmax probability), the ``top_k``
        labels when top_k > 1, every label's probability on request, and whether the prediction
        was rejected as out of scope (then ``label`` is the out-of-scope label and ``model_label``
        the class the model would have answered)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UserError(f"'--top-k' must be an integer >= 1, got {top_k!r}")
        probs = softmax(np.asarray(logits, dtype=np.float64))
        k = min(top_k, len(self.labels))
        ranked = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        rejected = None
        if self.out_of_scope is not None:
            s = oos_scores(logits, self.out_of_scope["method"], self.out_of_scope.get("temperature", 1.0))
            rejected = s < self.out_of_scope["threshold"]
        records = []
        for i in range(len(probs)):
            best = int(ranked[i, 0])
            record: dict[str, Any] = {"label": self.labels[best], "score": float(probs[i, best])}
            if rejected is not None:
                record["out_of_scope"] = bool(rejected[i])
                if rejected[i]:
                    record["model_label"] = record["label"]
                    record["label"] = self.out_of_scope["label"]
            if top_k > 1:
                record["top_k"] = [{"label": self.labels[int(j)], "score": float(probs[i, j])} for j in ranked[i]]
            if return_all_scores:
                record["scores"] = {name: float(p) for name, p in zip(self.labels, probs[i])}
            records.append(record)
        return records

    def predict(self, texts: str | Sequence[str], batch_size: int = 32, top_k: int = 1,
                return_all_scores: bool = False) -> dict | list[dict]:
        """Predictions for one text (a dict) or a list of texts (a list of dicts, in input order)."""
        if isinstance(texts, str):
            return self.predict([texts], batch_size, top_k, return_all_scores)[0]
        self.results(np.zeros((0, len(self.labels))), top_k)  # validates top_k before any work
        return self.results(self.logits(texts, batch_size), top_k, return_all_scores)

    def describe(self) -> dict:
        """What a caller may want to know about the loaded model (for logs and /metadata)."""
        cfg = self.model.config
        model_cfg = self.training_config.get("model") if isinstance(self.training_config.get("model"), dict) else {}
        return {"model_dir": str(self.model_dir) if self.model_dir else None,
                "labels": list(self.labels),
                "base_model": model_cfg.get("name_or_path") or getattr(cfg, "_name_or_path", None),
                "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
                "max_length": self.max_length, "long_text": self.long_text, "truncation": self.mode,
                "stride": self.stride if self.mode == "window" else None, "pooling": self.pooling,
                "precision": self.precision, "device": str(self.device), "out_of_scope": self.out_of_scope}


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


# --- streaming input ----------------------------------------------------------------------------


@dataclass
class Row:
    number: int
    """1-based row (data rows for csv/jsonl/parquet, lines for plain text)."""
    text: str
    id: Any = None
    label: Any = None


def input_format(path: str, requested: str | None) -> str:
    if requested:
        return requested
    if path == "-":
        return "txt"
    suffix = Path(path).suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise UserError(f"'--input': cannot tell the format of '{path}' from its extension '{suffix}'; use one of"
                        f" {', '.join(INPUT_FORMATS)}{closest(suffix, INPUT_FORMATS)} or pass --input-format")
    return INPUT_FORMATS[suffix]


class InputReader:
    """Rows of a csv / tsv / jsonl / parquet / plain-text file (or stdin), read lazily.

    Only the current line is held in memory, and a line longer than ``max_chars`` is refused
    before it is read whole, so any file size runs in bounded memory. The first row is read and
    checked on construction, so a wrong column or an empty file is reported before a model loads.
    """

    def __init__(self, path: str, fmt: str | None = None, text_column: str = "text", id_column: str | None = None,
                 label_column: str | None = None, max_chars: int = DEFAULT_MAX_CHARS):
        self.path, self.fmt = path, input_format(path, fmt)
        self.text_column, self.id_column, self.label_column = text_column, id_column, label_column
        self.max_chars = max_chars
        self.name = "stdin" if path == "-" else f"'{path}'"
        self.size = None
        if path != "-":
            p = Path(path)
            if not p.exists():
                raise UserError(f"'--input': file '{path}' does not exist")
            if not p.is_file():
                raise UserError(f"'--input': '{path}' is not a file")
            self.size = p.stat().st_size
            if self.size == 0:
                raise UserError(f"'--input': '{path}' is empty")
        elif self.fmt == "parquet":
            raise UserError("'--input': parquet cannot be read from stdin; pass a file")
        self.bytes_read = 0
        self._stream = None
        self._rows = self._parse()
        try:
            self._first = next(self._rows)
        except StopIteration:
            self.close()
            raise UserError(f"'--input': {self.name} holds no texts") from None

    # lines of bytes → str, with line numbers, UTF-8 checks and the length limit
    def _lines(self) -> Iterator[tuple[int, str]]:
        if self.path == "-":
            self._stream = sys.stdin.buffer
        else:
            self._stream = open(self.path, "rb")
        # Valid UTF-8 needs at most 4 bytes a character, so this many bytes always hold a legal line.
        limit = 4 * self.max_chars + 2
        number = 0
        while True:
            line = self._stream.readline(limit + 1)
            if not line:
                return
            number += 1
            self.bytes_read += len(line)
            if len(line) > limit or (len(line) == limit + 1 and not line.endswith(b"\n")):
                raise UserError(f"'--input': line {number} of {self.name} is longer than the {self.max_chars:,}"
                                " characters allowed per text (--max-chars); is this really one text per line?")
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # byte-order mark from Windows editors
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"'--input': line {number} of {self.name} is not valid UTF-8 (byte"
                                f" 0x{line[e.start]:02x} at position {e.start + 1}); convert the file to UTF-8,"
                                " e.g. iconv -f latin1 -t utf-8") from None
            yield number, text

    def _too_long(self, where: str, text: str) -> None:
        if len(text) > self.max_chars:
            raise UserError(f"'--input': {where} of {self.name} has {len(text):,} characters, more than the"
                            f" {self.max_chars:,} allowed per text (--max-chars)")

    def _parse(self) -> Iterator[Row]:
        if self.fmt == "txt":
            for number, line in self._lines():
                text = line.rstrip("\r\n")
                if text.strip():  # blank lines carry no text; line numbers keep the alignment
                    self._too_long(f"line {number}", text)
                    yield Row(number, text)
        elif self.fmt == "jsonl":
            yield from self._parse_jsonl()
        elif self.fmt in ("csv", "tsv"):
            yield from self._parse_csv()
        elif self.fmt == "parquet":
            yield from self._parse_parquet()
        else:
            raise UserError(f"'--input-format' must be one of csv, tsv, jsonl, parquet, txt; got '{self.fmt}'"
                            f"{closest(self.fmt, ['csv', 'tsv', 'jsonl', 'parquet', 'txt'])}")

    def _columns_problem(self, found: list[str], where: str) -> str | None:
        problems = []
        for flag, col in (("--text-column", self.text_column), ("--id-column", self.id_column),
                          ("--label-column", self.label_column)):
            if col is not None and col not in found:
                problems.append(f"'{flag}': column '{col}' not found in {where} of {self.name}; columns found:"
                                f" {', '.join(map(str, found)) or 'none'}{closest(col, found)}")
        return problems or None

    def _row(self, number: int, where: str, values: dict) -> Row:
        text = values.get(self.text_column)
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = str(text)
        if not isinstance(text, str) or not text.strip():
            what = "missing" if text is None else "empty" if isinstance(text, str) else f"a {type(text).__name__}"
            raise UserError(f"'--input': {where} of {self.name} has {what} text in column '{self.text_column}';"
                            " every row needs a text")
        self._too_long(where, text)
        return Row(number, text, values.get(self.id_column) if self.id_column else None,
                   values.get(self.label_column) if self.label_column else None)

    def _parse_jsonl(self) -> Iterator[Row]:
        number = 0
        for line_no, line in self._lines():
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UserError(f"'--input': {where} of {self.name} is not valid JSON ({_one_line(e, 120)});"
                                " expected one JSON object per line (JSON Lines)") from None
            if not isinstance(obj, dict):
                raise UserError(f"'--input': {where} of {self.name} is a JSON {type(obj).__name__}, not an object;"
                                " expected one JSON object per line (JSON Lines)")
            number += 1
            problems = self._columns_problem(list(obj), where)
            if problems:
                raise UserError(problems)
            yield self._row(number, where, obj)

    def _parse_csv(self) -> Iterator[Row]:
        csv.field_size_limit(max(self.max_chars + 1, 131072))
        lines = (text for _, text in self._lines())
        reader = csv.reader(lines, delimiter="\t" if self.fmt == "tsv" else ",")
        try:
            header = next(reader, None)
            if header is None:
                return
            problems = self._columns_problem(header, "the header")
            if problems:
                raise UserError(problems)
            for number, values in enumerate(reader, 1):
                if not values:
                    continue
                where = f"row {number} (line {reader.line_num})"
                if len(values) != len(header):
                    raise UserError(f"'--input': {where} of {self.name} has {len(values)} fields, the header"
                                    f" {len(header)}; check the quoting")
                yield self._row(number, where, dict(zip(header, values)))
        except csv.Error as e:
            raise UserError(f"'--input': line {reader.line_num} of {self.name} is not valid"
                            f" {self.fmt.upper()}: {_one_line(e, 120)}") from None

    def _parse_parquet(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for one cause: not a parquet file
            raise UserError(f"'--input': could not read {self.name} as parquet: {_one_line(e)}") from None
        problems = self._columns_problem(file.schema_arrow.names, "the schema")
        if problems:
            raise UserError(problems)
        columns = [c for c in dict.fromkeys((self.text_column, self.id_column, self.label_column)) if c]
        number = 0
        for batch in file.iter_batches(batch_size=1024, columns=columns):
            self.bytes_read = min(self.size, self.bytes_read + batch.nbytes)
            for values in batch.to_pylist():
                number += 1
                yield self._row(number, f"row {number}", values)

    def __iter__(self) -> Iterator[Row]:
        yield self._first
        yield from self._rows

    def chunks(self, size: int) -> Iterator[list[Row]]:
        chunk: list[Row] = []
        for row in self:
            chunk.append(row)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdin.buffer:
            self._stream.close()


# --- atomic output ------------------------------------------------------------------------------


class OutputWriter:
    """Records as JSON Lines or CSV, into a temporary sibling that replaces ``path`` only when
    every row is written: an error or Ctrl-C leaves no partial file (and an old file intact)."""

    def __init__(self, path: str, fmt: str | None = None):
        self.path = path
        if fmt is None:
            fmt = "jsonl" if path == "-" else OUTPUT_FORMATS.get(Path(path).suffix.lower())
            if fmt is None:
                suffix = Path(path).suffix.lower()
                raise UserError(f"'--output': cannot tell the format of '{path}' from its extension '{suffix}';"
                                f" use .jsonl or .csv{closest(suffix, OUTPUT_FORMATS)} or pass --output-format")
        self.fmt = fmt
        if path != "-":
            target = Path(path)
            if target.is_dir():
                raise UserError(f"'--output': '{path}' is a directory; name a file")
            if not target.parent.is_dir():
                raise UserError(f"'--output': directory '{target.parent}' does not exist")
            if not os.access(target.parent, os.W_OK):
                raise UserError(f"'--output': directory '{target.parent}' is not writable")
        self._file = None
        self._tmp: str | None = None
        self._csv = None
        self.rows = 0

    def __enter__(self) -> "OutputWriter":
        if self.path == "-":
            self._file = sys.stdout
        else:
            target = Path(self.path)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
            self._file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        return self

    def write(self, records: list[dict]) -> None:
        if self.fmt == "jsonl":
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        else:
            flat = [{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                     for k, v in r.items()} for r in records]
            if self._csv is None:
                fields = list(dict.fromkeys(k for r in flat for k in r))
                self._csv = csv.DictWriter(self._file, fieldnames=fields, extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerows(flat)
        self.rows += len(records)
        if self.path == "-":
            self._file.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path == "-":
            return
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                self._tmp = None
        finally:
            if self._tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._tmp)


# --- textft predict -----------------------------------------------------------------------------


def _add_model_args(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    parser.add_argument("--model", required=True, help="classifier directory (output.dir of textft train)")
    if batch_size:
        parser.add_argument("--batch-size", type=int, default=32, help="texts (or windows) per forward pass")
    parser.add_argument("--long-text", choices=LONG_TEXT,
                        help="truncate (keep the head), head+tail, or sliding_window; default: as in training")
    parser.add_argument("--stride", type=int, help="sliding_window: tokens shared by consecutive windows"
                                                   " (default: max_length / 4)")
    parser.add_argument("--pooling", choices=POOLING, default="mean", help="sliding_window: how window logits combine")
    parser.add_argument("--max-length", type=int, help="tokens per text or window (default: the training max_length)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 where the hardware runs it natively, else fp32; int8: dynamic"
                             " quantisation of the linear layers (CPU)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's, one per core);"
                                                     " fewer avoids oversubscription when other work shares the cores")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle-format weights (pytorch_model.bin): only for files you trust")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run model code shipped with the checkpoint: only for repositories you trust")


def _load_from_args(args, out_of_scope: bool = True) -> Classifier:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UserError(f"'--threads' must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return Classifier.from_pretrained(args.model, device=args.device, precision=args.precision,
                                      long_text=args.long_text, stride=args.stride, max_length=args.max_length,
                                      pooling=args.pooling, allow_pickle=args.allow_pickle,
                                      trust_remote_code=args.trust_remote_code, out_of_scope=out_of_scope)


def _check_positive(args, names: list[str]) -> None:
    problems = [f"'--{n.replace('_', '-')}' must be >= 1, got {getattr(args, n)}"
                for n in names if getattr(args, n) is not None and getattr(args, n) < 1]
    if problems:
        raise UserError(problems)


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(format="%(levelname)s %(message)s", level=logging.WARNING)


def predict_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft predict", description="Label every text of a file with a saved classifier.",
        epilog="Input: csv, tsv, jsonl, parquet, or plain text with one text per line ('-' reads stdin,"
               " as plain text unless --input-format says otherwise). Output: JSON Lines or CSV with the"
               " rows in input order, each with its id (--id-column) or row number, label and score.")
    parser.add_argument("--input", required=True, help="file to label, or - for stdin")
    parser.add_argument("--output", required=True, help=".jsonl or .csv file, or - for stdout (JSON Lines)")
    parser.add_argument("--input-format", choices=["csv", "tsv", "jsonl", "parquet", "txt"],
                        help="default: from the extension (stdin: txt)")
    parser.add_argument("--output-format", choices=["jsonl", "csv"], help="default: from the extension")
    parser.add_argument("--text-column", default="text", help="column (csv/parquet) or key (jsonl) of the text")
    parser.add_argument("--id-column", help="column copied to the output as 'id' (default: the row number)")
    parser.add_argument("--label-column", help="column of true labels: kept as 'true_label' and the accuracy is"
                                               " printed")
    parser.add_argument("--top-k", type=int, default=1, help="also list the k most likely labels")
    parser.add_argument("--all-scores", action="store_true", help="include every label's probability")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longest text (in characters) accepted")
    parser.add_argument("--chunk-size", type=int, default=4096,
                        help="texts read, sorted by length and labelled at a time (bounds the memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_model_args(parser)
    args = parser.parse_args(argv)
    _check_positive(args, ["batch_size", "top_k", "max_chars", "chunk_size"])
    if args.input != "-" and args.output != "-" and Path(args.input).resolve() == Path(args.output).resolve():
        raise UserError("'--output' must not be the input file")

    reader = InputReader(args.input, args.input_format, args.text_column, args.id_column, args.label_column,
                         args.max_chars)
    try:
        writer = OutputWriter(args.output, args.output_format)
        _quiet_libraries()
        clf = _load_from_args(args)
        with _terminate_as_exit():
            return _run_predict(clf, reader, writer, args)
    finally:
        reader.close()


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (kill, a job scheduler's timeout) unwinds like Ctrl-C, so the temporary output is removed."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_predict(clf: Classifier, reader: InputReader, writer: OutputWriter, args) -> int:
    from tqdm.auto import tqdm

    bar = tqdm(total=reader.size, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True,
               desc="predict", disable=args.no_progress or None, mininterval=0.5)
    start = time.perf_counter()
    n = correct = labelled = rejected = 0
    with writer:
        for chunk in reader.chunks(args.chunk_size):
            results = clf.predict([r.text for r in chunk], batch_size=args.batch_size, top_k=args.top_k,
                                  return_all_scores=args.all_scores)
            records = []
            for row, res in zip(chunk, results):
                record = {"id": row.id} if args.id_column else {"row": row.number}
                record.update(res)
                if args.label_column:
                    record["true_label"] = row.label
                    if row.label is not None:
                        labelled += 1
                        correct += str(row.label) == res["label"]
                rejected += bool(res.get("out_of_scope"))
                records.append(record)
            writer.write(records)
            n += len(chunk)
            bar.update(reader.bytes_read - bar.n)
            bar.set_postfix(texts=n)
        seconds = time.perf_counter() - start
        bar.close()
    where = "stdout" if args.output == "-" else args.output
    summary = (f"predicted {n:,} texts in {seconds:.1f} s ({n / max(seconds, 1e-9):,.1f} texts/s;"
               f" precision {clf.precision}, long_text {clf.long_text}) → {where}")
    if clf.out_of_scope is not None:
        summary += f"; {rejected:,} answered '{clf.out_of_scope['label']}'"
    print(summary, file=sys.stderr)
    if labelled:
        print(f"accuracy {correct / labelled:.4f} on {labelled:,} labelled rows", file=sys.stderr)
    return 0


# --- out-of-scope calibration -------------------------------------------------------------------


def choose_threshold(scores: np.ndarray, correct: np.ndarray, in_scope: np.ndarray,
                     target_precision: float | None = None, target_rejection: float | None = None) -> float:
    """The threshold (accept when score >= threshold) that meets the target on this data.

    target_precision: the lowest threshold whose accepted predictions are at least this precise
    (an out-of-scope example given any label counts as wrong): the most answers at that precision.
    target_rejection: reject this fraction of the in-scope examples (false rejections).
    """
    scores, correct, in_scope = np.asarray(scores, float), np.asarray(correct, bool), np.asarray(in_scope, bool)
    if target_rejection is not None:
        s = np.sort(scores[in_scope])
        if len(s) == 0:
            raise UserError("'--data' has no in-scope examples (labels of the model) to calibrate a rejection rate on")
        k = int(math.floor(target_rejection * len(s)))
        return float(s[min(k, len(s) - 1)]) if k > 0 else float(s[0])
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    precision = np.cumsum(c) / np.arange(1, len(s) + 1)
    # Only positions where the score changes are reachable thresholds (ties are accepted together).
    boundary = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(boundary & (precision >= target_precision - 1e-12))
    if len(ok) == 0:
        best = int(np.argmax(np.where(boundary, precision, -1)))
        raise UserError(f"'--target-precision': no threshold reaches precision {target_precision} on this data"
                        f" (the best is {precision[best]:.4f}, answering {best + 1} of {len(s)} examples);"
                        " lower the target")
    return float(s[ok[-1]])


def rejection_metrics(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Quality at a threshold; ``truth`` holds a model class id, or -1 for out of scope.

    in_scope_accuracy counts a rejected in-scope example as wrong (as on CLINC150);
    out_of_scope_recall is the share of out-of-scope examples rejected.
    """
    pred, truth, scores = np.asarray(pred), np.asarray(truth), np.asarray(scores, float)
    accepted = scores >= threshold
    ins = truth >= 0
    oos = ~ins
    right = accepted & (pred == truth) & ins

    def ratio(a, b):
        return float(a) / float(b) if b else None

    return {"threshold": float(threshold), "num_examples": int(len(truth)), "num_in_scope": int(ins.sum()),
            "num_out_of_scope": int(oos.sum()),
            "in_scope_accuracy": ratio(right.sum(), ins.sum()),
            "in_scope_accuracy_without_rejection": ratio(((pred == truth) & ins).sum(), ins.sum()),
            "in_scope_rejection_rate": ratio((~accepted & ins).sum(), ins.sum()),
            "out_of_scope_recall": ratio((~accepted & oos).sum(), oos.sum()),
            "out_of_scope_precision": ratio((~accepted & oos).sum(), (~accepted).sum()),
            "precision": ratio(right.sum(), accepted.sum()),
            "coverage": ratio(accepted.sum(), len(truth))}


def write_config_key(model_dir: Path, key: str, value: Any) -> None:
    """Set one key of config.json through a temporary sibling and a rename: readers see the old
    file or the new one, never a half-written one."""
    path = Path(model_dir) / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    fd, tmp = tempfile.mkstemp(prefix=".config.json.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def calibrate(clf: Classifier, texts: list[str], labels: list, method: str = "msp",
              target_precision: float | None = None, target_rejection: float | None = None,
              oos_label: str = DEFAULT_OOS_LABEL, batch_size: int = 32) -> dict:
    """Out-of-scope settings for ``clf`` from labelled validation texts; labels that are not
    classes of the model (``oos_label`` or any other) count as out of scope."""
    if (target_precision is None) == (target_rejection is None):
        raise UserError("give exactly one of --target-precision and --target-rejection")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UserError(f"'--target-precision' must be in (0, 1], got {target_precision}")
    if target_rejection is not None and not 0 <= target_rejection < 1:
        raise UserError(f"'--target-rejection' must be in [0, 1), got {target_rejection}")
    if method not in OOS_METHODS:
        raise UserError(f"'--method' must be one of {', '.join(OOS_METHODS)}, got '{method}'{closest(method, OOS_METHODS)}")
    if oos_label in clf.labels:
        raise UserError(f"'--label': '{oos_label}' is one of the model's own labels; choose another name")
    label2id = {name: i for i, name in enumerate(clf.labels)}
    truth = np.array([label2id.get(str(y), -1) for y in labels])
    logits = clf.logits(texts, batch_size)
    scores = oos_scores(logits, method)
    pred = logits.argmax(-1)
    threshold = choose_threshold(scores, (pred == truth) & (truth >= 0), truth >= 0, target_precision,
                                 target_rejection)
    target = {"precision": target_precision} if target_precision is not None else {"rejection": target_rejection}
    return {"method": method, "threshold": threshold, "label": oos_label, "temperature": 1.0, "target": target,
            "calibration": {**rejection_metrics(pred, truth, scores, threshold),
                            "precision_setting": clf.precision, "long_text": clf.long_text}}


def _print_rejection(m: dict, method: str) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"threshold {m['threshold']:.6g} ({method}) on {m['num_examples']} examples"
          f" ({m['num_in_scope']} in scope, {m['num_out_of_scope']} out of scope)")
    print(f"in-scope accuracy {fmt(m['in_scope_accuracy'])} (without rejection"
          f" {fmt(m['in_scope_accuracy_without_rejection'])}), in-scope rejected {fmt(m['in_scope_rejection_rate'])},"
          f" out-of-scope recall {fmt(m['out_of_scope_recall'])}, precision of answers {fmt(m['precision'])}")


def calibrate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="textft calibrate",
        description="Choose the confidence threshold below which predictions are answered with an out-of-scope"
                    " label, on labelled validation data, and store it in the model's config.json.",
        epilog="Rows whose label is not one of the model's labels count as out of scope. Default target:"
               " --target-rejection 0.05 (5%% of in-scope examples rejected).")
    parser.add_argument("--data", required=True, help="labelled validation file (csv, tsv, jsonl, parquet)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--method", choices=OOS_METHODS, default="msp",
                        help="msp: maximum softmax probability; energy: logsumexp of the logits")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target-precision", type=float, help="answered predictions at least this precise")
    target.add_argument("--target-rejection", type=float, help="reject this fraction of in-scope examples")
    parser.add_argument("--label", default=DEFAULT_OOS_LABEL, help="label answered below the threshold")
    parser.add_argument("--dry-run", action="store_true", help="print the threshold without writing it")
    parser.add_argument("--evaluate", action="store_true",
                        help="only measure the threshold already stored in the model on --data (e.g. a test file)")
    _add_model_args(parser)
    args = parser.parse_args(argv)
    _check_positive(args, ["batch_size"])
    if args.target_precision is None and args.target_rejection is None:
        args.target_rejection = 0.05
    if Path(args.data).suffix.lower() in (".txt", ".text"):
        raise UserError(f"'--data': '{args.data}' is plain text; calibration needs labels (csv, tsv, jsonl or parquet)")
    _, raw_config, _ = check_model_dir(args.model, args.allow_pickle)
    if args.evaluate and raw_config.get(OOS_KEY) is None:
        raise UserError(f"'--evaluate': '{args.model}' has no out-of-scope threshold yet; run textft calibrate first")
    reader = InputReader(args.data, None, args.text_column, None, args.label_column)
    try:
        rows = list(reader)
    finally:
        reader.close()
    missing = [r.number for r in rows if r.label is None]
    if missing:
        raise UserError(f"'--data': {len(missing)} row(s) without a label in column '{args.label_column}'"
                        f" (first: row {missing[0]})")
    _quiet_libraries()
    clf = _load_from_args(args, out_of_scope=args.evaluate)
    texts, labels = [r.text for r in rows], [r.label for r in rows]
    if args.evaluate:
        stored = clf.out_of_scope
        label2id = {name: i for i, name in enumerate(clf.labels)}
        truth = np.array([label2id.get(str(y), -1) for y in labels])
        logits = clf.logits(texts, args.batch_size)
        scores = oos_scores(logits, stored["method"], stored.get("temperature", 1.0))
        m = rejection_metrics(logits.argmax(-1), truth, scores, stored["threshold"])
        _print_rejection(m, stored["method"])
        return 0
    settings = calibrate(clf, texts, labels, args.method, args.target_precision, args.target_rejection, args.label,
                         args.batch_size)
    _print_rejection(settings["calibration"], args.method)
    if args.dry_run:
        return 0
    write_config_key(clf.model_dir, OOS_KEY, settings)
    print(f"wrote '{OOS_KEY}' to {clf.model_dir / 'config.json'}: predict and serve now answer '{args.label}'"
          " below the threshold")
    return 0
