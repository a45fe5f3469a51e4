"""What the web page asks of the service beyond ``textft serve``'s API: how each text was read."""

from __future__ import annotations

from collections import Counter

import pytest

from textft.classifier import Classifier
from textft.service.models import input_lengths, out_of_scope_settings

TEXTS = ["good", " ".join(["the movie was good"] * 3), " ".join(["the plot was awful and the acting poor"] * 9)]


@pytest.mark.parametrize("max_length,stride", [(16, 4), (16, 0), (12, 7), (32, 8)])
def test_window_counts_are_the_windows_the_classifier_reads(tiny_model_dir, max_length, stride):
    clf = Classifier.from_pretrained(tiny_model_dir, device="cpu", precision="fp32", long_text="sliding_window",
                                     max_length=max_length, stride=stride)
    enc = clf.tokenizer(TEXTS, truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True, verbose=False)
    actual = Counter(enc["overflow_to_sample_mapping"])
    info = input_lengths(clf, [(t, None) for t in TEXTS])
    assert [i["windows"] for i in info] == [actual[k] for k in range(len(TEXTS))]
    assert info[0] == {"tokens": 3, "max_length": max_length, "truncated": False, "mode": "window", "windows": 1,
                       "stride": stride, "pooling": "mean"}


def test_truncation_is_reported_against_the_token_budget(tiny_model_dir):
    clf = Classifier.from_pretrained(tiny_model_dir, device="cpu", precision="fp32", long_text="head+tail",
                                     max_length=16)
    short, medium, long = input_lengths(clf, [(t, None) for t in TEXTS])
    assert short["tokens"] == 3 and not short["truncated"] and short["mode"] == "head+tail"
    assert medium["tokens"] == len(clf.tokenizer(TEXTS[1])["input_ids"]) == 14 and not medium["truncated"]
    assert long["truncated"] and long["tokens"] == len(clf.tokenizer(TEXTS[2])["input_ids"]) > 16
    assert "windows" not in long


def test_out_of_scope_settings_read_from_the_model_config(tmp_path):
    assert out_of_scope_settings(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text('{"textft_out_of_scope": {"method": "msp", "threshold": 0.6,'
                                          ' "label": "other", "calibration": {"big": "report"}}}')
    assert out_of_scope_settings(tmp_path) == {"method": "msp", "threshold": 0.6, "label": "other"}
    (tmp_path / "config.json").write_text("{not json")
    assert out_of_scope_settings(tmp_path) is None
