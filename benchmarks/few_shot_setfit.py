"""One SetFit run for benchmarks/few_shot.py, executed by the Python of SetFit's own virtual environment
(it never imports textft): trains on a JSON Lines file, predicts a test file, writes a JSON result.

    python few_shot_setfit.py --train train.jsonl --test test.jsonl --model DIR --seed 0 --out result.json

The SetFit paper's protocol (Tunstall et al. 2022) with SetFit 1.x: 20 contrastive pairs drawn per
training example (``num_iterations=20``), one epoch, batch 16, body learning rate 2e-5, a logistic
regression head on the fine-tuned mean-pooled embeddings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("--train", "--test", "--model", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-iterations", type=int, default=20)
    args = parser.parse_args()

    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    train, test = read_jsonl(args.train), read_jsonl(args.test)
    model = SetFitModel.from_pretrained(args.model)
    # its checkpoints go beside the run's output, never into the directory the benchmark was started from
    training = TrainingArguments(output_dir=str(Path(args.out).parent / "setfit-checkpoints"), batch_size=16,
                                 num_iterations=args.num_iterations, num_epochs=1, body_learning_rate=2e-5,
                                 seed=args.seed, report_to="none", show_progress_bar=False)
    trainer = Trainer(model=model, args=training,
                      train_dataset=Dataset.from_list([{"text": r["text"], "label": r["label"]} for r in train]))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predictions = [str(p) for p in model.predict([r["text"] for r in test], batch_size=64, as_numpy=True)]
    correct = sum(p == r["label"] for p, r in zip(predictions, test))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"accuracy": correct / len(test), "train_seconds": seconds, "test_examples": len(test)}, f)


if __name__ == "__main__":
    main()
