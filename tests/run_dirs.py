"""Finished run directories written with the same writers train.py uses, from fixed predictions, and
the checks of a rendered HTML page."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from textft.config import load_config, save_config
from textft.metric_modules import compute_metrics
from textft.run_dir import write_predictions, write_reports
from textft.tasks.single_label import SingleLabel

WORDS = ["card", "transfer", "payment", "pending", "refund", "exchange_rate", "top_up", "cash_withdrawal",
         "verify_identity", "lost_or_stolen_phone", "beneficiary_not_allowed", "wrong_amount_of_cash_received"]


def class_names(k: int) -> list[str]:
    if k == 2:
        return ["neg", "pos"]
    return [f"{WORDS[i % len(WORDS)]}_{i}" for i in range(k)]


def fake_logits(y_true: np.ndarray, k: int, accuracy: float, seed: int) -> np.ndarray:
    """Logits whose argmax is right about ``accuracy`` of the time, mistakes landing on neighbours."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(y_true), k))
    wrong = rng.random(len(y_true)) > accuracy
    target = np.where(wrong, (y_true + rng.integers(1, 3, len(y_true))) % k, y_true)
    logits[np.arange(len(y_true)), target] += rng.uniform(1, 6, len(y_true))
    return logits


def write_run(out: Path, k: int = 2, n: int = 120, splits=("validation", "test"), predictions: bool = True,
              evals: int = 3, accuracy: float = 0.8, seed: int = 0, overrides: list[str] | None = None,
              extra: dict | None = None, texts: list[str] | None = None,
              outcomes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """A run directory as train.py leaves it; returns {split: (y_true, logits)} behind its numbers.
    ``outcomes`` fixes the true and predicted class ids of a split (then ``n`` is their length)."""
    out.mkdir(parents=True, exist_ok=True)
    names = class_names(k)
    cfg = load_config(None, ["data.train_file=train.jsonl", "model.name_or_path=builtin:tiny-bert",
                             f"output.dir={out}", *(overrides or [])])
    save_config(cfg, out / "textft_config.yaml")
    rng = np.random.default_rng(seed)
    reports, preds, behind = {}, {}, {}
    for s, split in enumerate(splits):
        y = rng.integers(0, k, n)
        logits = fake_logits(y, k, accuracy, seed + s + 1)
        if outcomes and split in outcomes:
            y, pred = (np.asarray(a) for a in outcomes[split])
            n = len(y)
            logits = np.random.default_rng(seed + s).normal(0, 0.1, (n, k)) + 4 * np.eye(k)[pred]
        m = compute_metrics(y, logits.argmax(-1), names)
        m["loss"] = float(np.mean(np.log(np.exp(logits).sum(-1)) - logits[np.arange(n), y]))
        reports[split] = m
        rows_text = texts or [f"example {i} of {split}: " + " ".join(rng.choice(WORDS, 30)) for i in range(n)]
        preds[split] = SingleLabel(names).prediction_rows(rows_text[:n], y, logits)
        behind[split] = (y, logits)
    steps = 20 * max(evals, 1)
    log = []
    for step in range(5, steps + 1, 5):
        log.append({"step": step, "epoch": round(step / 20, 4), "loss": 2.0 / (1 + step / 10), "lr": 1e-4,
                    "samples_per_s": 100.0 + step, "tokens_per_s": 3000.0 + 10 * step})
        if step % 20 == 0 and evals and "validation" in reports:
            m = dict(reports["validation"])
            m["macro_f1"] = m["macro_f1"] * (0.7 + 0.3 * step / steps)
            m["loss"] = m["loss"] + 1.0 - step / steps
            log.append({"step": step, "epoch": step / 20, "eval": m})
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    write_reports(out, reports, SingleLabel, {"label_names": names, "data_source": "synthetic", "parameters":
                                 {"trainable": 1000, "total": 4000}, "precision": "fp32", "num_processes": 1,
                                 "optimizer_steps": steps, "train_seconds": 12.5, "config": cfg.to_dict(),
                                 **(extra or {})}, title="synthetic")
    if predictions:
        write_predictions(out / "predictions", preds)
    return behind


class PageParser(HTMLParser):
    """Collects images, table rows and text, and checks that block elements open and close in order."""

    BLOCKS = {"html", "body", "main", "section", "table", "thead", "tbody", "tr", "td", "th", "details", "nav",
              "div", "h1", "h2", "h3", "p", "pre", "summary"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.rows, self.text, self.errors = [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "tr":
            self.rows += 1
        if tag in self.BLOCKS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.BLOCKS:
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            else:
                self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path):
    parser = PageParser()
    parser.feed(path.read_text())
    parser.close()
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def decoded_images(page):
    from PIL import Image

    images = []
    for attrs in page.images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix), "images must be embedded, not linked"
        png = base64.b64decode(attrs["src"][len(prefix):], validate=True)
        img = Image.open(io.BytesIO(png))
        img.verify()  # the whole stream decodes
        images.append((attrs["alt"], Image.open(io.BytesIO(png)).size, int(attrs["width"])))
    return images
