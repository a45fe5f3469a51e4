"""Padding-free batches: a flattened batch gives the padded batch's logits (checked here with the
exact per-text attention that stands in for CUDA's varlen kernel), and the option is refused
where it cannot run."""

import torch
from transformers import AutoModelForSequenceClassification

from conftest import toy_rows
from textft import packing
from textft.train import main


def test_flattened_batch_gives_the_padded_logits(tiny_model_dir, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    texts = [r["text"] for r in toy_rows(9, 4)] + ["good"]
    padded = tokenizer(texts, padding=True, return_tensors="pt")
    features = [{**{k: v for k, v in tokenizer(t).items() if k != "attention_mask"}, "labels": i % 2}
                for i, t in enumerate(texts)]
    with torch.no_grad():
        expected = model(**padded).logits
        packing.enable(model)
        flat = packing.flatten(features)
        assert flat["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))  # no padding at all
        assert flat["labels"].tolist() == [i % 2 for i in range(len(texts))]
        got = model(**{k: v for k, v in flat.items() if k != "labels"}).logits
        again = model(**padded).logits  # padded batches (evaluation) still work on the same model
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected, atol=1e-6, rtol=1e-6)


def test_padding_free_is_refused_without_a_gpu(tiny_args, capsys):
    if torch.cuda.is_available():
        return
    assert main([*tiny_args, "train.padding_free=true"]) == 2
    assert "'train.padding_free': padding-free batches need a CUDA GPU" in capsys.readouterr().err
