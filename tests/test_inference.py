"""The Python prediction API on a tiny trained classifier: agreement with transformers' pipeline,
batching, long texts, precisions, loading safety and out-of-scope calibration."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import textft
from conftest import FILLER, NEG, POS, toy_rows, write_jsonl
from textft.cli import main as cli
from textft.config import UserError
from textft.calibration import OOS_KEY, choose_threshold, oos_scores, rejection_metrics
from textft.classifier import Classifier
from tiny_classifier import copy_run, trained_run


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


@pytest.fixture(scope="module")
def clf(run):
    return textft.load(run, precision="fp32")


@pytest.fixture(scope="module")
def texts(toy_files):
    return [json.loads(line)["text"] for line in Path(toy_files["test"]).read_text().splitlines()]


def test_predict_agrees_with_plain_transformers_pipeline(run, clf, texts, toy_files):
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(run), device="cpu")
    expected = pipe(texts, batch_size=8, truncation=True, max_length=32)
    got = clf.predict(texts, batch_size=7)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert np.allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)
    labels = [json.loads(line)["label"] for line in Path(toy_files["test"]).read_text().splitlines()]
    assert np.mean([g["label"] == y for g, y in zip(got, labels)]) > 0.9


def test_batch_size_and_length_sorting_do_not_change_results(clf, texts):
    one = clf.logits(texts, batch_size=1)
    many = clf.logits(texts, batch_size=64)
    assert one.shape == (len(texts), 2)
    assert np.allclose(one, many, atol=1e-5)
    # input order is kept whatever the internal order
    assert np.allclose(clf.logits(texts[::-1], batch_size=5), one[::-1], atol=1e-5)


def test_single_text_empty_list_and_bad_types(clf):
    single = clf.predict("the film was excellent")
    assert single["label"] == "pos" and 0.5 < single["score"] <= 1
    assert clf.predict([]) == []
    with pytest.raises(TypeError):
        clf.predict([1, 2])
    with pytest.raises(UserError, match="top-k"):
        clf.predict(["x"], top_k=0)


def test_texts_a_tokenizer_cannot_read_are_named_before_any_work(clf):
    with pytest.raises(UserError) as e:
        clf.predict(["a fine film", "x \ud800 y", " \u200b ", "\x00\x07"])
    problems = e.value.problems
    assert [p.split(":")[0] for p in problems] == ["texts[1]", "texts[2]", "texts[3]"]
    assert "lone surrogate" in problems[0] and "U+D800" in problems[0]
    assert clf.predict("a fine film \x00 with a NUL inside")["label"] in clf.labels  # a real text with odd bytes is fine


def test_top_k_and_all_scores(clf, texts):
    res = clf.predict(texts[:5], top_k=2, return_all_scores=True)
    for r in res:
        assert [t["label"] for t in r["top_k"]][0] == r["label"]
        assert r["top_k"][0]["score"] >= r["top_k"][1]["score"]
        assert set(r["scores"]) == {"neg", "pos"}
        assert sum(r["scores"].values()) == pytest.approx(1.0)
        assert r["scores"][r["label"]] == pytest.approx(r["score"])
    assert len(clf.predict("great", top_k=10)["top_k"]) == 2  # capped at the number of labels
    assert "top_k" not in clf.predict("great") and "scores" not in clf.predict("great")


def test_head_tail_and_sliding_window_on_a_long_text(run, clf):
    # Polarity only at the end: the head sees fillers, head+tail and the windows see the verdict.
    long_text = " ".join(["the movie was quite long and the plot really"] * 12 + ["excellent superb great lovely"])
    window = textft.load(run, precision="fp32", long_text="sliding_window", max_length=16, stride=4)
    feats, owner = window.features([long_text, "good"])
    assert (owner == 0).sum() > 5 and (owner == 1).sum() == 1  # several overlapping windows, one for the short text
    ids = [f["input_ids"] for f, o in zip(feats, owner) if o == 0]
    assert all(len(i) <= 16 for i in ids) and ids[0][-5:-1] == ids[1][1:5]  # consecutive windows share 4 tokens
    # mean pooling = the mean of each window's logits, run one at a time through the plain model
    with torch.inference_mode():
        per_window = torch.cat([window.model(input_ids=torch.tensor([f["input_ids"]]),
                                              attention_mask=torch.tensor([f["attention_mask"]])).logits
                                for f, o in zip(feats, owner) if o == 0]).numpy()
    pooled = window.logits([long_text, "good"], batch_size=4)
    assert np.allclose(pooled[0], per_window.mean(0), atol=1e-5)
    assert np.allclose(pooled[1], clf.logits(["good"])[0], atol=1e-5)
    maxed = textft.load(run, precision="fp32", long_text="sliding_window", max_length=16, stride=4, pooling="max")
    assert np.allclose(maxed.logits([long_text])[0], per_window.max(0), atol=1e-5)

    truncated = textft.load(run, precision="fp32", max_length=16)
    head_tail = textft.load(run, precision="fp32", max_length=16, long_text="head+tail")
    assert head_tail.predict(long_text)["label"] == "pos"
    assert head_tail.predict(long_text)["score"] > truncated.predict(long_text)["score"] \
        or truncated.predict(long_text)["label"] == "neg"
    with pytest.raises(UserError, match="stride"):
        textft.load(run, long_text="sliding_window", max_length=16, stride=14)


@pytest.mark.slow
def test_evaluate_scores_long_texts_the_way_predict_does(run, tmp_path, capsys):
    # Verdict words only at the end of long reviews: the windows see them, a 16-token head does not.
    fillers = " ".join(["the movie was quite long and the plot really"] * 6)
    rows = [{"text": f"{fillers} {w}", "label": lab} for lab, words in
            (("pos", ["excellent superb", "great lovely", "superb great"]), ("neg", ["awful terrible", "bad boring", "terrible awful"]))
            for w in words]
    data = tmp_path / "long.jsonl"
    write_jsonl(data, rows)
    results = {}
    # 'truncate' is the name head had before training and prediction shared one vocabulary
    for mode, shown in (("truncate", "head"), ("head+tail", "head+tail"), ("sliding_window", "sliding_window")):
        out = tmp_path / mode
        assert cli(["evaluate", "--model", str(run), "--data", str(data), "--long-text", mode, "--max-length", "16",
                    "--stride", "4", "--output", str(out)]) == 0
        assert f"long texts: {shown} at 16 tokens" in capsys.readouterr().out
        results[mode] = json.loads((out / "eval_report.json").read_text())
        assert (out / "report.html").is_file()
    window = textft.load(run, precision="fp32", long_text="sliding_window", max_length=16, stride=4)
    expected = window.logits([r["text"] for r in rows]).argmax(-1)
    labels = [window.labels.index(r["label"]) for r in rows]
    ev = results["sliding_window"]["splits"]["evaluation"]
    assert ev["accuracy"] == pytest.approx(float(np.mean(expected == np.array(labels))))
    assert results["sliding_window"]["stride"] == 4 and results["truncate"]["stride"] is None
    # the head alone sees the same fillers in every text, so it predicts one class for all six
    head = results["truncate"]["splits"]["evaluation"]["confusion_matrix"]
    assert sorted(sum(col) for col in zip(*head)) == [0, 6]


def test_int8_and_bf16_run_and_agree_with_fp32(run, clf, texts):
    fp32 = [r["label"] for r in clf.predict(texts)]
    int8 = textft.load(run, precision="int8")
    assert int8.precision == "int8"
    assert isinstance(int8.model.classifier, torch.ao.nn.quantized.dynamic.Linear)
    bf16 = textft.load(run, precision="bf16")
    assert bf16.precision == "bf16"
    for other in (int8, bf16):
        labels = [r["label"] for r in other.predict(texts)]
        assert np.mean([a == b for a, b in zip(labels, fp32)]) >= 0.9


def test_precision_choices(run):
    auto = textft.load(run)
    assert auto.precision in ("bf16", "fp32") and auto.device.type == "cpu"
    with pytest.raises(UserError, match="fp16 runs on GPUs only"):
        textft.load(run, precision="fp16", device="cpu")
    with pytest.raises(UserError, match="did you mean 'int8'"):
        textft.load(run, precision="int")


def test_pickle_weights_are_refused_unless_allowed(run, clf, tmp_path):
    from safetensors.torch import load_file

    pickled = copy_run(run, tmp_path / "pickled")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UserError, match="pickle-format weights.*--allow-pickle"):
        textft.load(pickled)
    allowed = textft.load(pickled, allow_pickle=True, precision="fp32")
    assert np.allclose(allowed.logits(["great film"]), clf.logits(["great film"]), atol=1e-6)


def test_checkpoint_code_never_runs_unless_trusted(run, tmp_path):
    remote = copy_run(run, tmp_path / "remote")
    marker = tmp_path / "code-ran"
    (remote / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomForSequenceClassification"}
    (remote / "config.json").write_text(json.dumps(cfg))
    clf = textft.load(remote, precision="fp32")
    assert clf.predict("good")["label"] in ("pos", "neg")
    assert not marker.exists()


def _bad_model_dir(case, run, tiny_model_dir, tmp_path) -> Path:
    if case == "missing":
        return tmp_path / "nope"
    if case == "file":
        return Path(run) / "config.json"
    if case == "no_config":
        return tmp_path
    if case == "encoder":  # a saved BERT without a classification head
        from transformers import AutoModel

        AutoModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "encoder")
        return tmp_path / "encoder"
    if case == "no_tokenizer":  # transformers would build a tokenizer of the 5 special tokens
        path = copy_run(run, tmp_path / "no-tokenizer")
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (path / name).unlink(missing_ok=True)
        return path
    path = copy_run(run, tmp_path / "no-weights")
    (path / "model.safetensors").unlink()
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist"), ("file", "is a file"), ("no_config", "no config.json"),
    ("encoder", "is not a text classifier"), ("no_weights", "has no weights"),
    ("no_tokenizer", "its tokenizer has no vocabulary")])
def test_model_dir_problems_are_one_clear_error(case, expected, run, tiny_model_dir, tmp_path, capsys):
    path = _bad_model_dir(case, run, tiny_model_dir, tmp_path)
    with pytest.raises(UserError, match=expected):
        textft.load(path)
    (tmp_path / "in.txt").write_text("hello\n")
    assert cli(["predict", "--model", str(path), "--input", str(tmp_path / "in.txt"),
                "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


# --- out-of-scope ---------------------------------------------------------------------------------


def test_scores_and_threshold_choice():
    logits = np.array([[4.0, 0.0], [1.0, 0.5], [0.0, 3.0], [0.2, 0.1]])
    msp = oos_scores(logits, "msp")
    assert np.allclose(msp, [1 / (1 + np.exp(-4)), 1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(-3)), 1 / (1 + np.exp(-0.1))])
    assert np.allclose(oos_scores(logits, "energy"), np.log(np.exp(logits).sum(1)))
    scores = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([True, True, True, False, True, False])
    in_scope = np.array([True, True, True, True, True, False])
    assert choose_threshold(scores, correct, in_scope, target_precision=1.0) == 0.9
    assert choose_threshold(scores, correct, in_scope, target_precision=0.8) == 0.7  # 4 of 5 answers right
    assert choose_threshold(scores, correct, in_scope, target_rejection=0.2) == 0.8  # 1 of 5 in-scope rejected
    assert choose_threshold(scores, correct, in_scope, target_rejection=0.0) == 0.7
    with pytest.raises(UserError, match="no threshold reaches precision"):
        choose_threshold(scores, np.zeros(6, bool), in_scope, target_precision=0.5)
    m = rejection_metrics(np.array([0, 0, 1, 1, 0, 1]), np.array([0, 0, 1, 0, 0, -1]), scores, 0.8)
    assert m["in_scope_accuracy"] == pytest.approx(3 / 5) and m["out_of_scope_recall"] == 1.0
    assert m["in_scope_rejection_rate"] == pytest.approx(1 / 5) and m["precision"] == pytest.approx(3 / 4)


def _gibberish(n, seed):
    # Out of scope for a polarity classifier: letters it never saw, fillers, and one word of each
    # polarity, so no training signal points either way (the model's confidence should drop).
    rng = np.random.default_rng(seed)
    return [" ".join([*rng.choice(list("qxzjkvw"), size=rng.integers(3, 8)), *rng.choice(FILLER, 2),
                      str(rng.choice(POS)), str(rng.choice(NEG))]) for _ in range(n)]


def test_calibrate_writes_threshold_and_predict_answers_out_of_scope(run, tmp_path, capsys):
    model = copy_run(run, tmp_path / "model")
    rows = toy_rows(60, 7) + [{"text": t, "label": "unknown"} for t in _gibberish(30, 0)]
    data = write_jsonl(tmp_path / "calibration.jsonl", rows)
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--target-rejection", "0.1",
                "--method", "msp", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and "out-of-scope recall" in out
    settings = json.loads((model / "config.json").read_text())[OOS_KEY]
    assert settings["method"] == "msp" and settings["label"] == "out_of_scope"
    assert settings["target"] == {"rejection": 0.1}
    assert settings["calibration"]["num_out_of_scope"] == 30
    assert settings["calibration"]["in_scope_rejection_rate"] <= 0.1
    assert not list(model.glob(".config.json.tmp-*"))
    # --evaluate measures the stored threshold on other data and leaves the model alone
    before = (model / "config.json").read_text()
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--evaluate", "--precision", "fp32"]) == 0
    assert f"threshold {settings['threshold']:.6g} (msp) on 90 examples" in capsys.readouterr().out
    assert (model / "config.json").read_text() == before

    clf = textft.load(model, precision="fp32")
    res = clf.predict([r["text"] for r in rows])
    threshold = settings["threshold"]
    assert all(r["out_of_scope"] == (r["score"] < threshold) for r in res)
    assert all(r["label"] == "out_of_scope" and r["model_label"] in ("neg", "pos") for r in res if r["out_of_scope"])
    assert sum(r["out_of_scope"] for r in res[60:]) > sum(r["out_of_scope"] for r in res[:60])
    assert textft.load(model, precision="fp32", out_of_scope=False).predict("xq zz")["label"] in ("neg", "pos")

    # the calibrated checkpoint still loads in plain transformers
    from transformers import pipeline

    assert pipeline("text-classification", model=str(model))("great")[0]["label"] in ("neg", "pos")

    # predict on the command line answers the label too
    (tmp_path / "in.txt").write_text("\n".join(r["text"] for r in rows) + "\n")
    assert cli(["predict", "--model", str(model), "--input", str(tmp_path / "in.txt"), "--output",
                str(tmp_path / "out.jsonl"), "--precision", "fp32", "--no-progress"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["label"] for x in lines] == [r["label"] for r in res]
    assert "answered 'out_of_scope'" in capsys.readouterr().err


def test_calibrate_by_precision_and_energy(run, tmp_path, capsys):
    model = copy_run(run, tmp_path / "model")
    rows = toy_rows(60, 8) + [{"text": t, "label": "other"} for t in _gibberish(20, 1)]
    data = write_jsonl(tmp_path / "cal.jsonl", rows)
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--method", "energy",
                "--target-precision", "0.9", "--label", "none_of_these", "--precision", "fp32"]) == 0
    settings = json.loads((model / "config.json").read_text())[OOS_KEY]
    assert settings["method"] == "energy" and settings["label"] == "none_of_these"
    assert settings["calibration"]["precision"] >= 0.9
    res = textft.load(model, precision="fp32").predict([r["text"] for r in rows])
    assert {r["label"] for r in res} <= {"neg", "pos", "none_of_these"}


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), "1"])
def test_a_stored_temperature_that_cannot_scale_logits_is_refused(temperature, run, tmp_path, capsys):
    model = copy_run(run, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config[OOS_KEY] = {"method": "energy", "threshold": 0.5, "label": "unknown", "temperature": temperature}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"'textft_out_of_scope.temperature' must be a finite number > 0"):
        textft.load(model, precision="fp32")
    (tmp_path / "in.txt").write_text("a good film\n")
    assert cli(["predict", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "temperature" in err and "Traceback" not in err
    with pytest.raises(UserError, match="temperature must be a finite number > 0"):
        oos_scores(np.zeros((1, 2)), "msp", temperature=0)


@pytest.mark.parametrize("args,expected", [
    (["--target-precision", "1.5"], "must be in (0, 1]"),
    (["--label", "pos"], "one of the model's own labels"),
    (["--label-column", "gold"], "column 'gold' not found"),
])
def test_calibrate_bad_input(args, expected, run, tmp_path, capsys):
    model = copy_run(run, tmp_path / "model")
    before = (model / "config.json").read_text()
    data = write_jsonl(tmp_path / "cal.jsonl", toy_rows(10, 9))
    assert cli(["calibrate", "--model", str(model), "--data", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert (model / "config.json").read_text() == before


def test_textft_load_is_the_public_entry_point(run):
    assert callable(textft.load)
    assert isinstance(textft.load(run, precision="fp32"), Classifier)
