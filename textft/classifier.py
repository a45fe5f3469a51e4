"""A saved classifier ready for fast prediction: ``Classifier.from_pretrained(DIR or hub id)``.

Texts are encoded, sorted by length and batched so that padding stays small; the model runs under
``torch.inference_mode`` in the chosen precision. Long texts are truncated as in training (head,
tail or head+tail) or split into overlapping windows whose logits are pooled. ``textft.load`` is
this class's ``from_pretrained``; ``textft predict``, ``evaluate``, ``calibrate`` and ``serve`` all
run through it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from textft import oos_features, tasks
from textft.config import LONG_TEXT
from textft.errors import UserError, closest, one_line
from textft.model_dir import check_model_dir, training_config  # noqa: F401  (part of the classifier API)
from textft.lora import is_adapter_dir, load_adapter_model
from textft.out_of_scope import OOS_KEY, check_settings, in_scope_scores, load_statistics
from textft.shared_base import SharedBase, attach_adapter
from textft.texts import check_pairs, check_texts, split_inputs, unreadable_inputs

log = logging.getLogger("textft")

POOLING = ("mean", "max")
LONG_TEXT_ALIASES = {"truncate": "head"}
"""``truncate`` was the name of ``head`` before prediction and training shared one vocabulary."""


def position_limit(model) -> int:
    """Most tokens the model's position embeddings cover (RoBERTa-style ones start after the padding id)."""
    n = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    offset = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    return n - offset - 1 if isinstance(offset, int) else n


def check_options(long_text: str | None, pooling: str, precision: str, max_length: int | None,
                  stride: int | None, backend: str = "auto") -> str | None:
    """Every problem with the prediction options at once; returns long_text in the shared vocabulary."""
    from textft.config import INFERENCE_PRECISIONS
    from textft.onnx_backend import check_backend

    long_text = LONG_TEXT_ALIASES.get(long_text, long_text)
    problems = check_backend(backend)
    if long_text is not None and long_text not in LONG_TEXT:
        problems.append(f"'--long-text' must be one of {', '.join(LONG_TEXT)}, got '{long_text}'"
                        f"{closest(long_text, LONG_TEXT)}")
    if pooling not in POOLING:
        problems.append(f"'--pooling' must be one of {', '.join(POOLING)}, got '{pooling}'{closest(pooling, POOLING)}")
    if precision not in INFERENCE_PRECISIONS:
        problems.append(f"'--precision' must be one of {', '.join(INFERENCE_PRECISIONS)}, got '{precision}'"
                        f"{closest(precision, INFERENCE_PRECISIONS)}")
    if max_length is not None and max_length < 8:
        problems.append(f"'--max-length' must be >= 8, got {max_length}")
    if stride is not None and stride < 0:
        problems.append(f"'--stride' must be >= 0, got {stride}")
    if problems:
        raise UserError(problems)
    return long_text


def _device(device: str | None):
    import torch

    try:
        device_t = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise UserError(f"'--device': {one_line(e)}") from None
    if device_t.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"'--device': '{device}' requested but no CUDA GPU is available")
    return device_t


def _load_weights(path: Path, name: str, safetensors: bool, trust_remote_code: bool):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from textft.tokenization import tokenizer_problem

    hint = "" if trust_remote_code else " (if it needs its own code and you trust it, pass --trust-remote-code)"
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a loading bar per model is noise in a service's log
    try:
        if is_adapter_dir(path):  # the base model with the adapter merged in
            model, tokenizer = load_adapter_model(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, use_safetensors=safetensors)
    except UserError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"'--model': could not load '{name}': {one_line(e)}{hint}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if problem := tokenizer_problem(tokenizer):
        raise UserError(f"'--model': '{name}' cannot classify text: {problem}")
    # A tail-trained run saves truncation_side=left for plain pipelines; textft applies --long-text
    # itself, so the tokenizer's own truncation must keep the head.
    tokenizer.truncation_side = "right"
    return model.eval(), tokenizer


def _to_precision(model, precision: str, device):
    import torch

    model.to(device)
    if precision in ("bf16", "fp16") and device.type != "cpu":
        model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    if precision == "int8":
        from torch import nn

        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao; it still works and needs no
            # extra dependency.
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return model


def _window_stride(tokenizer, max_length: int, stride: int | None) -> int:
    if not tokenizer.is_fast:
        raise UserError("'--long-text': sliding_window needs a fast (Rust) tokenizer, and this model has none")
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    stride = max_length // 4 if stride is None else stride
    if stride >= max_length - specials:
        raise UserError(f"'--stride' {stride} must be smaller than the window's {max_length - specials}"
                        f" text tokens (max_length {max_length} minus {specials} special tokens)")
    return stride


@dataclass(frozen=True)
class Outputs:
    """What the model gives for each input row: its logits, the features the out-of-scope scores read
    (when asked for), and the in-scope score of the stored out-of-scope method (when there is one).
    Slicing selects rows of all three, so a micro-batch's outputs split among its requests."""

    logits: np.ndarray
    features: np.ndarray | None = None
    in_scope: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, rows) -> "Outputs":
        return Outputs(self.logits[rows], None if self.features is None else self.features[rows],
                       None if self.in_scope is None else self.in_scope[rows])

    @staticmethod
    def concat(parts: list["Outputs"]) -> "Outputs":
        def join(name):
            values = [getattr(p, name) for p in parts if len(p)]
            return None if not values or any(v is None for v in values) else np.concatenate(values)

        return Outputs(np.concatenate([p.logits for p in parts]), join("features"), join("in_scope"))


def pool_rows(values: np.ndarray, owner: np.ndarray, n: int, how: str) -> np.ndarray:
    """Rows of ``values`` pooled per ``owner`` (a text's windows): their mean or their maximum."""
    if how == "max":
        pooled = np.full((n, values.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(pooled, owner, values)
        return pooled
    pooled = np.zeros((n, values.shape[1]), dtype=np.float32)
    np.add.at(pooled, owner, values)
    return pooled / np.bincount(owner, minlength=n).astype(np.float32)[:, None]


class Classifier:
    """A sequence classifier with its tokenizer, precision and long-text handling (see the module)."""

    def __init__(self, model, tokenizer, *, device, precision: str, long_text: str, max_length: int,
                 stride: int = 0, head_fraction: float = 0.25, pooling: str = "mean",
                 out_of_scope: dict | None = None, model_dir: Path | None = None, training_config: dict | None = None,
                 task=None, backend: str = "torch", runner=None, backend_info: dict | None = None,
                 oos_statistics: oos_features.FeatureStatistics | None = None):
        self.model, self.tokenizer, self.device, self.precision = model, tokenizer, device, precision
        self.backend, self.runner, self.backend_info = backend, runner, backend_info or {}
        """torch or onnx; on onnx, ``runner`` maps a collated batch to logits (textft.onnx_export)."""
        self.long_text, self.max_length, self.stride, self.pooling = long_text, max_length, stride, pooling
        self.head_fraction, self.out_of_scope = head_fraction, out_of_scope
        self.oos_statistics = oos_statistics
        """Training-feature statistics of a feature-based out-of-scope score (textft.oos_features)."""
        statistics = (out_of_scope or {}).get("statistics") or {}
        self.representation = statistics.get("representation", oos_features.DEFAULT_REPRESENTATION)
        """Which features ``outputs(features=True)`` reads (textft.oos_features.REPRESENTATIONS)."""
        self.model_dir, self.training_config = model_dir, training_config or {}
        self.task = task or tasks.from_model_config(model.config.to_dict())
        """What the outputs mean and how they become answers (textft.tasks)."""
        self.labels = self.task.label_names
        trained_pairs = self.trained_setting("text_pair_column")
        self.pairs: bool | None = (trained_pairs is not None) if self.training_config else None
        """Whether the model reads text pairs (None: not a textft run, either is accepted)."""
        self.pair_truncation = self.trained_setting("pair_truncation") or "longest_first"
        self._collate = self.make_collator()

    def make_collator(self):
        from textft.tokenization import collator

        return collator(self.tokenizer, mixed_precision=self.precision != "fp32",
                        on_gpu=self.device.type == "cuda")

    def replace(self, **changes) -> "Classifier":
        """A copy with some settings changed (the model and tokenizer are shared)."""
        import copy

        new = copy.copy(self)
        for key, value in changes.items():
            if not hasattr(new, key):
                raise AttributeError(key)
            setattr(new, key, value)
        new._collate = new.make_collator()
        return new

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str | None = None, precision: str = "auto",
                        long_text: str | None = None, stride: int | None = None, max_length: int | None = None,
                        pooling: str = "mean", allow_pickle: bool = False, trust_remote_code: bool = False,
                        out_of_scope: bool = True, backend: str = "auto",
                        shared: tuple[SharedBase, str] | None = None) -> "Classifier":
        """Load a classifier directory (a textft run or any ``*ForSequenceClassification`` checkpoint),
        or a hub id (downloaded to the Hugging Face cache).

        device: ``cuda`` when available, else ``cpu`` by default. precision: auto (bf16 where the
        hardware runs it natively), fp32, bf16, fp16 (GPU), int8 (dynamic quantisation, CPU).
        long_text: head, tail or head+tail truncation, or sliding_window with ``stride`` tokens shared
        by consecutive windows (default a quarter of ``max_length``); by default the truncation the
        model was trained with. max_length: tokens per text or window, by default the training
        max_length. pooling: how window logits combine (mean or max).
        out_of_scope: apply the threshold stored by ``textft calibrate``, if any.
        backend: torch, onnx (ONNX Runtime on CPU, exported once and cached next to the model), or
        auto: ONNX Runtime only where it keeps every answer (see ``textft.onnx_backend``).
        shared: (a SharedBase, a name) to run an adapter directory on that one copy of its base model
        under that name (unmerged, in fp32 or CPU bf16 autocast) instead of loading and merging its own.
        """
        from textft.onnx_backend import choose_backend, select_onnx
        from textft.precision import inference_precision

        long_text = check_options(long_text, pooling, precision, max_length, stride, backend)
        path, raw_config, safetensors = check_model_dir(model_dir, allow_pickle, trust_remote_code)
        where = f"'{path / 'config.json'}'"
        task = tasks.from_model_config(raw_config, where)
        oos = check_settings(raw_config.get(OOS_KEY), where) \
            if out_of_scope and task.out_of_scope else None
        statistics = load_statistics(path, oos, task.num_outputs, where)
        if statistics is not None and backend != "torch":
            if backend == "onnx":
                raise UserError(f"'--backend': the out-of-scope score of '{model_dir}' ({oos['method']}) reads the"
                                " encoder's features, which the ONNX export does not give; use --backend torch")
            backend = "torch"
        trained = training_config(path)
        data_cfg = trained.get("data") if isinstance(trained.get("data"), dict) else {}
        task.delimiter = data_cfg.get("label_delimiter")
        device_t = _device(device)
        requested, precision = precision, inference_precision(precision, device_t)
        # A feature-based out-of-scope score reads the adapter model's own features, which the shared
        # base's runner does not give: such an adapter loads merged, on its own.
        shared = shared if shared is not None and is_adapter_dir(path) and statistics is None else None
        if shared is not None:
            model, tokenizer = attach_adapter(*shared, path)
            precision = "bf16" if precision == "bf16" and device_t.type == "cpu" else "fp32"
        else:
            model, tokenizer = _load_weights(path, str(model_dir), safetensors, trust_remote_code)

        trained_length = data_cfg.get("max_length") if isinstance(data_cfg.get("max_length"), int) else None
        # A textft run stores its training length as the tokenizer's limit (for plain pipelines);
        # the model itself may still take more.
        tok_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else 512
        positions = position_limit(model)
        limit = positions if tok_limit == trained_length else min(positions, tok_limit)
        max_length = max_length or trained_length or min(limit, 512)
        if max_length > limit:
            raise UserError(f"'--max-length' {max_length} exceeds what the model accepts ({limit} tokens)")
        if long_text is None:
            long_text = data_cfg.get("truncation") if data_cfg.get("truncation") in LONG_TEXT else "head"
        stride = _window_stride(tokenizer, max_length, stride) if long_text == "sliding_window" else 0
        settings = dict(device=device_t, long_text=long_text, max_length=max_length, stride=stride,
                        head_fraction=data_cfg.get("head_fraction", 0.25), pooling=pooling, out_of_scope=oos,
                        model_dir=path, training_config=trained, task=task, oos_statistics=statistics)
        if shared is not None:
            base, name = shared
            return cls(model, tokenizer, precision=precision, runner=lambda batch: base.run(name, batch).float().cpu()
                       .numpy(), **settings)
        parameters = sum(p.numel() for p in model.parameters())
        if choose_backend(backend, requested, device_t, parameters) == "onnx":
            onnx = select_onnx(cls(model, tokenizer, precision="fp32", backend="onnx", **settings), requested,
                               explicit=backend == "onnx")
            if onnx is not None:
                return onnx
        return cls(_to_precision(model, precision, device_t), tokenizer, precision=precision, **settings)

    def trained_setting(self, key: str):
        """A ``data`` setting of the textft run that trained the model (None for other checkpoints)."""
        data_cfg = self.training_config.get("data")
        return data_cfg.get(key) if isinstance(data_cfg, dict) else None

    # -- encoding and forward ------------------------------------------------------------------

    def features(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[dict], np.ndarray]:
        """Model inputs of every feature (one per text or pair, or one per window) and the text it belongs to."""
        from textft.tokenization import MODEL_INPUTS, encode_pairs, encode_texts

        if pairs is not None:
            if self.long_text == "sliding_window":
                raise UserError("'--long-text': sliding_window splits single texts; text pairs are cut as in"
                                f" training ({self.pair_truncation})")
            enc, owner = encode_pairs(texts, pairs, self.tokenizer, self.max_length, self.pair_truncation), \
                np.arange(len(texts))
        elif self.long_text == "sliding_window":
            enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, stride=self.stride,
                                 return_overflowing_tokens=True, verbose=False)
            owner = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
        else:
            enc = encode_texts(texts, self.tokenizer, self.max_length, self.long_text, self.head_fraction)
            owner = np.arange(len(texts))
        keys = [k for k in MODEL_INPUTS if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(owner))], owner

    def _autocast(self):
        import torch

        if self.precision == "bf16" and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def logits(self, texts: Sequence[str], batch_size: int = 32, pairs: Sequence[str | None] | None = None) -> np.ndarray:
        """Logits of each text or (text, pairs[i]) pair (pooled over its windows with ``sliding_window``),
        float32, in input order. A None in ``pairs`` marks a single text among pairs."""
        return self.outputs(texts, batch_size, pairs, features=False).logits

    def outputs(self, texts: Sequence[str], batch_size: int = 32, pairs: Sequence[str | None] | None = None,
                features: bool | None = None) -> Outputs:
        """``logits`` of each input with, when ``features`` (by default: when the stored out-of-scope score
        reads them), the features the out-of-scope scores read (mean over a long text's windows), and
        the stored out-of-scope score's in-scope score of each input."""
        texts = check_texts(texts)
        if batch_size < 1:
            raise UserError(f"'--batch-size' must be >= 1, got {batch_size}")
        want = self.needs_features if features is None else features
        if want and self.runner is not None:
            raise UserError("the out-of-scope score reads the encoder's features, which the ONNX export does not"
                            " give; use --backend torch")
        if not texts:
            return self.scored(np.zeros((0, self.task.num_outputs), dtype=np.float32),
                               np.zeros((0, 0), dtype=np.float32) if want else None)
        if pairs is not None:
            pairs = check_pairs(texts, pairs, self.pairs)
            if any(p is None for p in pairs):  # singles and pairs are encoded (and batched) apart
                return self.mixed_outputs(texts, pairs, batch_size, want)
        elif self.pairs:
            raise UserError("this model was trained on text pairs: give each input as"
                            " {\"text\": ..., \"text_pair\": ...} (a second text column for files)")
        feats, owner = self.features(texts, pairs)
        logits, hidden = self.forward(feats, batch_size, want)
        if self.long_text != "sliding_window":
            return self.scored(logits, hidden)
        pooled = pool_rows(logits, owner, len(texts), self.pooling)
        return self.scored(pooled, pool_rows(hidden, owner, len(texts), "mean") if want else None)

    def forward(self, feats: list[dict], batch_size: int, want_features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (and the features the out-of-scope scores read) of encoded inputs, in their order."""
        import torch

        # Longest first: padding stays small, and the peak memory shows up in the first batch.
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        out = np.empty((len(feats), self.task.num_outputs), dtype=np.float32)
        hidden = None
        representation = self.representation if want_features else None
        with torch.inference_mode(), self._autocast(), oos_features.tap(self.model, representation) as read:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                collated = self._collate([feats[i] for i in idx])
                if self.runner is not None:
                    out[idx] = self.runner(collated)
                    continue
                batch = {k: v.to(self.device) for k, v in collated.items()}
                result = self.model(**batch, output_hidden_states=representation == "mean_pooled")
                out[idx] = result.logits.float().cpu().numpy()
                if read is not None:
                    rows = read(result, batch)
                    hidden = np.empty((len(feats), rows.shape[1]), dtype=np.float32) if hidden is None else hidden
                    hidden[idx] = rows
        return out, hidden

    def mixed_outputs(self, texts: list[str], pairs: list[str | None], batch_size: int, want: bool) -> Outputs:
        single = [i for i, p in enumerate(pairs) if p is None]
        paired = [i for i, p in enumerate(pairs) if p is not None]
        a = self.outputs([texts[i] for i in single], batch_size, features=want)
        b = self.outputs([texts[i] for i in paired], batch_size, [pairs[i] for i in paired], features=want)
        order = np.argsort(np.array(single + paired), kind="stable")
        return Outputs.concat([a, b])[order]

    def scored(self, logits: np.ndarray, features: np.ndarray | None) -> Outputs:
        """The outputs with the stored out-of-scope score of each row (None without a threshold, or for a
        feature score when the features were not read)."""
        if self.needs_features and features is None:
            return Outputs(logits)
        return Outputs(logits, features, in_scope_scores(self.out_of_scope, self.oos_statistics, logits,
                                                                    features))

    @property
    def needs_features(self) -> bool:
        return self.out_of_scope is not None and self.out_of_scope["method"] in oos_features.FEATURE_METHODS

    # -- results ---------------------------------------------------------------------------------

    def results(self, outputs: Outputs | np.ndarray, top_k: int = 1, return_all_scores: bool = False) -> list[dict]:
        """One answer per row of ``outputs`` (or of bare logits when the out-of-scope score, if any, reads
        only them), shaped by the task: ``label`` and ``score`` (single-label, with ``out_of_scope`` once
        calibrated), ``labels`` above their thresholds (multi-label), or ``value`` (regression); see
        ``decode`` in textft.tasks."""
        if not isinstance(outputs, Outputs):
            outputs = self.scored(np.asarray(outputs), None)
        return self.task.decode(outputs.logits, top_k, return_all_scores, self.out_of_scope, outputs.in_scope)

    def predict(self, texts: str | dict | Sequence[str | dict], batch_size: int = 32, top_k: int = 1,
                return_all_scores: bool = False) -> dict | list[dict]:
        """Predictions for one input (a dict) or a list (a list of dicts, in input order). An input is a
        text, or a pair ``{"text": ..., "text_pair": ...}`` for a model trained on pairs."""
        if isinstance(texts, (str, dict)):
            return self.predict([texts], batch_size, top_k, return_all_scores)[0]
        self.results(np.zeros((0, self.task.num_outputs)), top_k, return_all_scores)  # validates before any work
        singles, pairs = split_inputs(texts)
        if problems := unreadable_inputs(singles, pairs):
            raise UserError(problems)
        return self.results(self.outputs(singles, batch_size, pairs), top_k, return_all_scores)

    def describe(self) -> dict:
        """What a caller may want to know about the loaded model (for logs and /metadata)."""
        cfg = self.model.config
        model_cfg = self.training_config.get("model") if isinstance(self.training_config.get("model"), dict) else {}
        window = self.long_text == "sliding_window"
        return {"model_dir": str(self.model_dir) if self.model_dir else None,
                "task": self.task.name, "text_pairs": self.pairs,
                "decision": {k: v for k, v in self.task.model_config().items() if k != "problem_type"} or None,
                "labels": list(self.labels),
                "base_model": model_cfg.get("name_or_path") or getattr(cfg, "_name_or_path", None),
                "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
                "max_length": self.max_length, "long_text": self.long_text,
                "stride": self.stride if window else None, "pooling": self.pooling,
                "precision": self.precision, "device": str(self.device), "out_of_scope": self.out_of_scope,
                "backend": self.backend, **({"onnx": self.backend_info} if self.backend == "onnx" else {})}
