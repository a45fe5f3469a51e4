"""Out-of-scope scores from the encoder's features, and the training statistics behind them.

A classifier's softmax is confident far from its training data as often as near it; the features
its head reads tell the two apart better. Two scores, both "higher is more in scope":

- ``mahalanobis``: minus the Mahalanobis distance to the nearest class mean, with one covariance
  shared by all classes (Lee et al. 2018; Podolskiy et al. 2021 for intents), estimated with
  Ledoit-Wolf shrinkage so that a class or feature with few examples cannot make it singular;
- ``knn``: the cosine similarity to the k-th nearest training example (Sun et al. 2022).

The statistics are fitted on the training split's in-scope examples and saved next to the model as
``out_of_scope-<digest>.safetensors`` (safetensors: tensors only, nothing that runs code when read), with its SHA-256 in
``config.json``; ``load`` refuses a file that is missing, changed, or does not fit the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textft.errors import UserError

STATS_PREFIX = "out_of_scope-"
"""The statistics file is ``out_of_scope-<first 16 hex digits of its SHA-256>.safetensors``: a new one
never overwrites the one config.json names, so a crash between the two writes leaves a consistent model."""
FEATURE_METHODS = ("mahalanobis", "knn")
KNN_K = 10
"""Neighbour whose similarity is the kNN score: the 10th nearest training example (Sun et al. 2022
found k between 1 and 50 close for a model trained with cross-entropy; a middle k is less noisy than
the nearest alone)."""
MAX_BANK = 50_000
"""Most training examples the kNN score compares against (a seeded, class-stratified sample beyond):
its file and its cost per prediction grow with the bank."""
STATS_NAME = re.compile(re.escape(STATS_PREFIX) + r"[0-9a-f]{16}\.safetensors")
FORMAT = "textft-out-of-scope-statistics"
VERSION = "1"


@dataclass
class FeatureStatistics:
    """What the feature scores need from the training split, with its feature size checked."""

    means: np.ndarray
    """Class means, (classes, features)."""
    whitening: np.ndarray
    """W with W Wᵀ the inverse of the shared covariance, (features, features): the Mahalanobis
    distance is the Euclidean distance after multiplying by W."""
    bank: np.ndarray
    """Unit-length training features for kNN, (examples, features), float16."""
    k: int = KNN_K

    def __post_init__(self):
        self._white_means = self.means.astype(np.float64) @ self.whitening

    @property
    def num_features(self) -> int:
        return int(self.means.shape[1])

    def score(self, features: np.ndarray, method: str) -> np.ndarray:
        """In-scope score of each row of ``features`` (higher: more in scope)."""
        x = np.asarray(features, dtype=np.float64)
        if method == "mahalanobis":
            z = x @ self.whitening
            d2 = (z * z).sum(1)[:, None] - 2 * z @ self._white_means.T + (self._white_means ** 2).sum(1)[None]
            return -np.sqrt(np.maximum(d2.min(1), 0.0))
        if method == "knn":
            unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            sims = unit.astype(np.float32) @ self.bank.T.astype(np.float32)
            k = min(self.k, sims.shape[1])
            return np.partition(sims, -k, axis=1)[:, -k].astype(np.float64)
        raise ValueError(f"not a feature method: {method}")


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> FeatureStatistics:
    """Statistics of in-scope training features (``labels`` are class ids; rows labelled -1, known
    out-of-scope examples, are left out)."""
    from sklearn.covariance import LedoitWolf

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    keep = y >= 0
    x, y = x[keep], y[keep]
    present = np.unique(y)
    if len(present) < 2 or len(x) <= len(present):
        raise UserError("the out-of-scope statistics need training examples of at least two classes")
    means = np.zeros((num_classes, x.shape[1]))
    for c in present:
        means[c] = x[y == c].mean(0)
    # A class absent from the training features (possible with max_train_samples) gets no mean of its
    # own: it is placed at infinity, so it never is the nearest.
    means[np.setdiff1d(np.arange(num_classes), present)] = np.inf
    precision = LedoitWolf(assume_centered=True).fit(x - means[y]).precision_
    whitening = np.linalg.cholesky((precision + precision.T) / 2)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(unit) > MAX_BANK:
        unit = unit[_stratified_sample(y, MAX_BANK, seed)]
    return FeatureStatistics(means=means, whitening=whitening, bank=unit.astype(np.float16))


def _stratified_sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    kept, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=stratify)
    return np.sort(kept)


# --- the file next to the model -------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(stats: FeatureStatistics, model_dir: Path, representation: str) -> dict:
    """Write ``STATS_FILE`` into ``model_dir`` (atomically) and return its entry for config.json."""
    from safetensors.numpy import save as to_bytes

    from textft.files import replace_file

    means = np.where(np.isfinite(stats.means), stats.means, np.nan).astype(np.float32)
    tensors = {"means": means, "whitening": stats.whitening.astype(np.float32),
               "bank": np.ascontiguousarray(stats.bank, dtype=np.float16)}
    data = to_bytes(tensors, metadata={"format": FORMAT, "version": VERSION, "representation": representation,
                                       "k": str(stats.k)})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{STATS_PREFIX}{digest[:16]}.safetensors"
    replace_file(Path(model_dir) / name, data)
    return {"file": name, "sha256": digest, "representation": representation,
            "k": stats.k, "num_features": stats.num_features, "bank_size": int(len(stats.bank))}


def load(model_dir: Path, entry: dict, num_classes: int, where: str) -> FeatureStatistics:
    """The statistics ``entry`` (from config.json) names, after checking the file is the one that was
    written (its SHA-256) and fits a model of ``num_classes`` outputs."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as from_bytes

    name = entry.get("file")
    if not isinstance(name, str) or not STATS_NAME.fullmatch(name):
        raise UserError(f"{where}: 'statistics.file' must name an {STATS_PREFIX}<digest>.safetensors file of the"
                        f" model directory, got {name!r}")
    path = Path(model_dir) / name
    again = "; run textft calibrate again to rebuild it"
    if not path.is_file():
        raise UserError(f"{where}: the out-of-scope statistics '{name}' are missing from the model directory{again}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise UserError(f"{where}: '{name}' is not the file textft calibrate wrote (its SHA-256 differs from the"
                        f" one recorded in config.json): it was changed or replaced{again}")
    try:
        tensors = from_bytes(data)
    except (SafetensorError, ValueError) as e:
        raise UserError(f"{where}: '{name}' is not a readable safetensors file: {e}{again}") from None
    problems = _shape_problems(tensors, num_classes, entry)
    if problems:
        raise UserError([f"{where}: '{name}' {p}{again}" for p in problems])
    means = tensors["means"].astype(np.float64)
    means[np.isnan(means).all(1)] = np.inf
    k = entry.get("k", KNN_K)
    return FeatureStatistics(means=means, whitening=tensors["whitening"].astype(np.float64),
                             bank=tensors["bank"], k=k if isinstance(k, int) and k >= 1 else KNN_K)


def _shape_problems(tensors: dict, num_classes: int, entry: dict) -> list[str]:
    missing = [k for k in ("means", "whitening", "bank") if k not in tensors]
    if missing:
        return [f"lacks {', '.join(missing)}"]
    means, white, bank = tensors["means"], tensors["whitening"], tensors["bank"]
    d = means.shape[1] if means.ndim == 2 else -1
    problems = []
    if means.ndim != 2 or means.shape[0] != num_classes:
        problems.append(f"has class means of shape {list(means.shape)}; the model has {num_classes} classes")
    if white.shape != (d, d):
        problems.append(f"has a whitening matrix of shape {list(white.shape)}, expected [{d}, {d}]")
    if bank.ndim != 2 or bank.shape[1] != d or bank.shape[0] < 1:
        problems.append(f"has a kNN bank of shape {list(bank.shape)}, expected [n, {d}]")
    if entry.get("num_features") not in (None, d):
        problems.append(f"has {d} features where config.json records {entry.get('num_features')}")
    if not problems and not (np.isfinite(white).all() and np.isfinite(bank).all()):
        problems.append("holds values that are not finite")
    return problems


def remove_stale(model_dir: Path, keep: str | None) -> None:
    """Delete the statistics files config.json no longer names (``keep``: the one it names)."""
    for path in Path(model_dir).glob(f"{STATS_PREFIX}*.safetensors"):
        if path.name != keep and STATS_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)


def entry_problem(entry) -> str | None:
    """Why a config.json ``statistics`` entry is malformed, or None."""
    if not isinstance(entry, dict):
        return f"must be a mapping, got {entry!r}"
    if not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]):
        return "must record the file's sha256"
    if entry.get("representation") not in REPRESENTATIONS:
        return f"'representation' must be one of {', '.join(REPRESENTATIONS)}, got {entry.get('representation')!r}"
    return None


# --- reading the features during a forward pass ---------------------------------------------------

REPRESENTATIONS = ("head_input", "mean_pooled")
"""Which features the scores read: the input of the head's output layer (for BERT the pooled [CLS]
output), or the mean of the last hidden states over the text's tokens."""
DEFAULT_REPRESENTATION = "head_input"
"""Measured on held-out Banking77 intents against mean_pooled (benchmarks/oos_heldout.py)."""


def head_output_layer(model):
    """The layer that turns features into the logits: the last module outside the encoder with one
    output per class (``classifier`` for BERT, ``classifier.out_proj`` for RoBERTa)."""
    encoder = {id(m) for m in model.base_model.modules()}
    n = model.config.num_labels
    layers = [m for m in model.modules() if id(m) not in encoder and getattr(m, "out_features", None) == n]
    if not layers:
        raise UserError(f"cannot find the output layer of {type(model).__name__}'s head to read its features")
    return layers[-1]


@contextlib.contextmanager
def tap(model, representation: str | None):
    """``read(output, batch)`` for each forward pass inside the block: the features of its rows as
    float32 numpy; with ``representation`` None, nothing is read and ``read`` is None."""
    if representation is None:
        yield None
        return
    seen = []
    handle = head_output_layer(model).register_forward_pre_hook(lambda module, args: seen.append(args[0])) \
        if representation == "head_input" else None

    def read(output, batch) -> np.ndarray:
        if representation == "head_input":
            return seen.pop().float().cpu().numpy()
        hidden = output.hidden_states[-1].float()
        mask = batch["attention_mask"].to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()

    try:
        yield read
    finally:
        if handle is not None:
            handle.remove()
