"""Export of a sequence classifier to ONNX and the cache of exports next to the model.

The export goes through ``torch.onnx.export`` (the torch.export-based exporter): ``optimum``'s ONNX
exporter now lives in ``optimum-onnx``, whose releases require transformers < 4.58, and the
TorchScript exporter traces the attention-mask branches of transformers 5 as constants (its logits
differ from PyTorch's on padded batches). The graph maps ``input_ids``, ``attention_mask`` and, where
the tokenizer makes them, ``token_type_ids`` (text pairs) to the logits of the model's head, whatever
the task (single-label, multi-label or regression heads are all one linear layer on the pooled text).

Cache: ``MODEL_DIR/onnx/<key>/{model.onnx,meta.json}``, where the key hashes the weights, the
architecture part of config.json and the export settings, so that retrained weights or another
exporter get a new entry and a stale one is never used. An entry is built in a temporary sibling
and renamed into place (readers see a whole entry or none); ``meta.json`` records the SHA-256 of
``model.onnx``, and an entry that fails that check or does not load is rebuilt. A model directory
that cannot be written to caches under ``~/.cache/textft/onnx`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger("textft")

ONNX_PRECISIONS = ("fp32", "int8")
EXPORT_FORMAT = 1
"""Bump when the exported graph changes for the same weights: every cached entry is rebuilt."""
CACHE_NAME = "onnx"
# config.json keys that change nothing in the graph (calibration, decision thresholds, label names)
_CONFIG_IGNORED = ("textft_out_of_scope", "textft_thresholds", "id2label", "label2id", "_name_or_path",
                   "transformers_version")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


# --- cache keys -----------------------------------------------------------------------------------


def file_sha256(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(model_dir: Path) -> str:
    """SHA-256 over the weight files (every shard) and the graph-relevant part of config.json."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    h.update(json.dumps({k: v for k, v in config.items() if k not in _CONFIG_IGNORED}, sort_keys=True).encode())
    files = [model_dir / n for n in _WEIGHT_FILES if (model_dir / n).is_file()]
    for index in [f for f in files if f.name.endswith(".index.json")]:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        files += [model_dir / s for s in shards]
    for f in files:
        h.update(f.name.encode())
        file_sha256(f, h)
    return h.hexdigest()


def export_settings(precision: str) -> dict:
    import onnxruntime
    import torch

    return {"format": EXPORT_FORMAT, "precision": precision, "exporter": "torch.onnx.export(dynamo=True)",
            "torch": torch.__version__.split("+")[0], "onnxruntime": onnxruntime.__version__,
            "quantisation": "dynamic int8, per-channel weights" if precision == "int8" else None}


def cache_roots(model_dir: Path) -> list[Path]:
    """Where entries may live: next to the model, else (read-only model directory) the user cache."""
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textft" / CACHE_NAME
    return [Path(model_dir) / CACHE_NAME, user]


# --- running ----------------------------------------------------------------------------------------


class OnnxRunner:
    """An ONNX Runtime session that maps a collated batch (torch tensors) to float32 logits."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: dict) -> np.ndarray:
        feed = {name: np.ascontiguousarray(batch[name].cpu().numpy(), dtype=np.int64) for name in self.inputs}
        return self.session.run(None, feed)[0].astype(np.float32, copy=False)


# --- export -------------------------------------------------------------------------------------------


def _dummy_batch(tokenizer) -> dict:
    # Two rows of different lengths: neither dimension is 1 (torch.export would specialise it)
    # and the mask has padding, so the traced graph is the padded-batch one.
    texts = ["a short text", "a somewhat longer text that needs a few more tokens than the first one"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def export_fp32(model, tokenizer, path: Path) -> None:
    """Export ``model`` (a *ForSequenceClassification, fp32, CPU) as a logits-only ONNX graph."""
    import torch

    batch = _dummy_batch(tokenizer)
    names = list(batch)

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    if "token_type_ids" in names:
        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    else:
        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
    Logits.forward = forward
    dims = {name: {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC} for name in names}
    model = model.float().eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Logits(model), tuple(batch[n] for n in names), None, dynamo=True,
                                    input_names=names, output_names=["logits"], dynamic_shapes=dims,
                                    external_data=False, verbose=False)
        program.save(str(path), external_data=False)


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter prints its progress and warns about optional torchvision ops: noise for a user.
    # onnxruntime.quantization logs on the root logger
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fuse_transformer_ops(src: Path, dst: Path, config) -> bool:
    """ORT's offline transformer fusions (SkipLayerNorm, BiasGelu, ...) for BERT-like encoders."""
    model_type = getattr(config, "model_type", "")
    if model_type not in ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta", "mpnet"):
        return False
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with _quiet_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = optimize_model(str(src), model_type="bert" if model_type != "distilbert" else "bert",
                                   num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                   hidden_size=int(getattr(config, "hidden_size", 0) or 0))
            fused.save_model_to_file(str(dst))
        return True
    except Exception as e:  # a pattern the fuser does not know: the unfused graph is still correct
        log.info("ONNX transformer fusions skipped (%s); ONNX Runtime's own graph optimisations still apply",
                 " ".join(str(e).split())[:200])
        return False


def quantize_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


# --- the cache ------------------------------------------------------------------------------------------


class CacheEntry:
    def __init__(self, root: Path, key: str):
        self.dir = root / key
        self.key = key

    @property
    def model(self) -> Path:
        return self.dir / "model.onnx"

    def read_meta(self) -> dict | None:
        """The entry's metadata if the entry is whole and its model file matches its recorded hash."""
        try:
            meta = json.loads((self.dir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != self.key or not self.model.is_file():
            return None
        if file_sha256(self.model) != meta.get("sha256"):
            return None
        return meta


def _write_entry(root: Path, key: str, build: Callable[[Path], dict]) -> CacheEntry:
    """Build an entry in a temporary sibling and rename it into place; a concurrent builder that
    finished first wins and ours is discarded."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    entry = CacheEntry(root, key)
    try:
        meta = build(tmp)
        meta["key"] = key
        meta["sha256"] = file_sha256(tmp / "model.onnx")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        with open(tmp / "meta.json", "rb") as f:
            os.fsync(f.fileno())
        try:
            os.rename(tmp, entry.dir)
        except OSError:
            if entry.read_meta() is None:  # not a finished concurrent build: a damaged leftover
                shutil.rmtree(entry.dir, ignore_errors=True)
                os.rename(tmp, entry.dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _remove_stale(root: Path, weights: str) -> None:
    """Entries of weights this directory no longer holds can never be used again."""
    for meta_file in root.glob("*/meta.json"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta_file.read_text(encoding="utf-8")).get("weights") != weights:
                shutil.rmtree(meta_file.parent, ignore_errors=True)


def _writable_root(model_dir: Path) -> Path:
    for root in cache_roots(model_dir):
        probe = root if root.exists() else root.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if os.access(probe, os.W_OK):
            return root
    raise OSError(f"no writable cache directory for the ONNX export of {model_dir}")


def load_or_export(model_dir: Path, precision: str, model, tokenizer, threads: int | None = None,
                   verify: Callable[[OnnxRunner, OnnxRunner], dict | None] | None = None) -> tuple[OnnxRunner, dict]:
    """A session for ``precision`` (fp32 or int8) of the model in ``model_dir``, from the cache or
    exported now; and the entry's metadata. ``verify(fp32_runner, int8_runner)`` measures an int8
    export against fp32 when it is built; its result is kept in the metadata."""
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {ONNX_PRECISIONS}, got {precision!r}")
    model_dir = Path(model_dir)
    weights = weights_digest(model_dir)
    settings = export_settings(precision)
    key = hashlib.sha256(json.dumps({"weights": weights, **settings}, sort_keys=True).encode()).hexdigest()[:24]

    for root in cache_roots(model_dir):
        entry = CacheEntry(root, key)
        if not entry.dir.exists():
            continue
        meta = entry.read_meta()
        if meta is not None:
            try:
                return OnnxRunner(entry.model, threads), meta | {"cache": str(entry.dir)}
            except Exception as e:  # onnxruntime raises its own types for an unreadable graph
                reason = " ".join(str(e).split())[:200]
        else:
            reason = "incomplete, or model.onnx does not match the hash in meta.json"
        log.warning("ONNX cache entry %s is damaged (%s): rebuilding it", entry.dir, reason)
        shutil.rmtree(entry.dir, ignore_errors=True)

    root = _writable_root(model_dir)
    started = time.perf_counter()
    if precision == "fp32":
        log.warning("exporting %s to ONNX (once; cached in %s)", model_dir, root)

        def build(tmp: Path) -> dict:
            export_fp32(model, tokenizer, tmp / "exported.onnx")
            fused = fuse_transformer_ops(tmp / "exported.onnx", tmp / "model.onnx", model.config)
            if fused:
                (tmp / "exported.onnx").unlink()
            else:
                os.replace(tmp / "exported.onnx", tmp / "model.onnx")
            return {"weights": weights, "settings": settings, "fused": fused}
    else:
        fp32_runner, fp32_meta = load_or_export(model_dir, "fp32", model, tokenizer, threads)
        log.warning("quantising the ONNX export of %s to int8 (once; cached in %s)", model_dir, root)

        def build(tmp: Path) -> dict:
            quantize_int8(fp32_runner.path, tmp / "model.onnx")
            quality = verify(fp32_runner, OnnxRunner(tmp / "model.onnx", threads)) if verify else None
            return {"weights": weights, "settings": settings, "from": fp32_meta["key"], "quality": quality}
    entry = _write_entry(root, key, build)
    _remove_stale(root, weights)
    meta = entry.read_meta()
    if meta is None:
        raise OSError(f"the ONNX export written to {entry.dir} does not verify")
    log.info("ONNX %s export ready in %.1f s: %s", precision, time.perf_counter() - started, entry.model)
    return OnnxRunner(entry.model, threads), meta | {"cache": str(entry.dir)}
