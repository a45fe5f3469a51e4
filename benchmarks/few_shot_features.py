"""How much the frozen bundled MiniLM already knows about Banking77's intents, and through which
features: a logistic regression and a nearest-centroid classifier on frozen encoder features of the same
few-shot draws as benchmarks/few_shot.py, scored on the official test split (3,080 queries).

    python benchmarks/few_shot_features.py                 # 8 per intent, seeds 0 1 2
    python benchmarks/few_shot_features.py --sizes 5 8 16

Features (all L2-normalised before the classifiers):
- ``mean``: the mean of the last layer's token states over the attention mask: the pooling
  all-MiniLM-L6-v2 was trained with as a sentence-transformers model;
- ``pooler``: BERT's pooler output (tanh of a dense layer on the [CLS] state), what
  ``BertForSequenceClassification``'s head reads;
- ``cls``: the last layer's [CLS] state itself.

Every text is embedded once (max_length 64, batches of 64) and cached in ``--cache``; the classifiers then
take seconds, so this measures which features a few-shot head should read before any fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_shot import DATA, ROOT, draw, minilm_path, read_jsonl  # noqa: E402

FEATURES = ("mean", "pooler", "cls")


def embed(texts: list[str]) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    out = {name: [] for name in FEATURES}
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            o = model(**enc)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out["mean"].append(((o.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
            out["pooler"].append(o.pooler_output.numpy())
            out["cls"].append(o.last_hidden_state[:, 0].numpy())
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def cached_features(texts: list[str], cache: Path) -> dict[str, dict[str, np.ndarray]]:
    known: dict[str, dict[str, np.ndarray]] = {}
    if cache.is_file():
        z = np.load(cache, allow_pickle=True)
        known = {t: {f: z[f][i] for f in FEATURES} for i, t in enumerate(z["texts"])}
    todo = [t for t in texts if t not in known]
    if todo:
        start = time.perf_counter()
        new = embed(todo)
        print(f"embedded {len(todo):,} texts in {time.perf_counter() - start:.0f} s", flush=True)
        known.update({t: {f: new[f][i] for f in FEATURES} for i, t in enumerate(todo)})
        keys = list(known)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, texts=np.array(keys, dtype=object), **{f: np.stack([known[t][f] for t in keys]) for f in FEATURES})
    return known


def scores(train: list[dict], test: list[dict], feats: dict, feature: str) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    x = normalize(np.stack([feats[r["text"]][feature] for r in train]))
    xt = normalize(np.stack([feats[r["text"]][feature] for r in test]))
    y, yt = np.array([r["label"] for r in train]), np.array([r["label"] for r in test])
    labels = sorted(set(y))
    centroids = normalize(np.stack([x[y == label].mean(0) for label in labels]))
    centroid = float(np.mean(np.array(labels)[(xt @ centroids.T).argmax(1)] == yt))
    logreg = float(np.mean(LogisticRegression(C=10, max_iter=2000).fit(x, y).predict(xt) == yt))
    return {"centroid": centroid, "logreg": logreg}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", default=str(ROOT / "runs/benchmarks/few_shot_features.npz"))
    args = parser.parse_args(argv)
    train_rows = read_jsonl(Path(args.data) / "train.jsonl")
    test = read_jsonl(Path(args.data) / "test.jsonl")
    draws = {(k, s): draw(train_rows, k, s) for k in args.sizes for s in args.seeds}
    texts = sorted({r["text"] for rows in draws.values() for r in rows} | {r["text"] for r in test})
    feats = cached_features(texts, Path(args.cache))
    for (k, seed), train in draws.items():
        for feature in FEATURES:
            print(json.dumps({"per_class": k, "seed": seed, "feature": feature,
                              **{n: round(v, 4) for n, v in scores(train, test, feats, feature).items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
