"""Out-of-scope rejection, round two: feature scores (Mahalanobis, kNN) chosen by ``textft calibrate``,
their statistics saved and verified next to the model, used by predict, serve and the service; and
training with known out-of-scope examples (``data.oos_label``)."""

import asyncio
import json

import httpx
import numpy as np
import pytest

import textft
from conftest import FILLER, NEG, POS, toy_rows, write_jsonl
from live_server import serve_process
from textft import calibration, oos_features
from textft.calibration import OOS_KEY
from textft.out_of_scope import softmax
from textft.classifier import Outputs
from textft.cli import main as cli
from textft.errors import UserError
from tiny_classifier import copy_run, trained_run


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


def gibberish(n: int, seed: int) -> list[str]:
    """Out of scope for the polarity task: letters and fillers with one word of each polarity."""
    rng = np.random.default_rng(seed)
    return [" ".join([*rng.choice(list("qxzjkvw"), size=rng.integers(3, 8)), *rng.choice(FILLER, 2),
                      str(rng.choice(POS)), str(rng.choice(NEG))]) for _ in range(n)]


# --- the choice of score, on features made to tell the scores apart --------------------------------


class ToyClassifier:
    """Two classes whose logits read only the first two feature dimensions: out-of-scope rows have
    in-scope-like logits (the softmax cannot tell them apart) but sit far away along the other two."""

    labels = ["a", "b"]
    precision, long_text, representation = "fp32", "head", "head_input"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.features = {}

    def rows(self, n: int, out: bool) -> tuple[list[str], list[str]]:
        y = self.rng.integers(0, 2, n)
        x = np.c_[np.where(y[:, None] == 0, [2.0, -2.0], [-2.0, 2.0]) + self.rng.normal(0, 1.5, (n, 2)),
                  self.rng.normal(0, 0.3, (n, 2)) + (6.0 if out else 0.0)]
        texts = [f"t{len(self.features) + i}" for i in range(n)]
        self.features.update(zip(texts, x))
        return texts, ["other" if out else "ab"[c] for c in y]

    def outputs(self, texts, batch_size=32, pairs=None, features=None):
        x = np.stack([self.features[t] for t in texts])
        return Outputs(x[:, :2].astype(np.float32), x if features else None)


def test_calibrate_picks_mahalanobis_where_it_separates_and_the_softmax_does_not():
    clf = ToyClassifier()
    train = clf.rows(400, out=False)
    texts, labels = clf.rows(300, out=False)
    oos_texts, oos_labels = clf.rows(100, out=True)
    settings, stats = calibration.calibrate(clf, texts + oos_texts, labels + oos_labels, target_rejection=0.05,
                                            train=train)
    methods = settings["calibration"]["methods"]
    assert settings["method"] in oos_features.FEATURE_METHODS and stats is not None
    assert methods["mahalanobis"]["out_of_scope_recall"] > 0.95 and methods["msp"]["out_of_scope_recall"] < 0.2
    assert methods["knn"]["out_of_scope_recall"] > 0.95
    assert settings["calibration"]["in_scope_rejection_rate"] <= 0.05
    assert settings["calibration"]["chosen_because"].startswith("it rejects the most out-of-scope examples")
    # without out-of-scope rows to compare on: the default (mahalanobis); without training
    # data: the best logit score
    assert calibration.calibrate(clf, texts, labels, target_rejection=0.05, train=train)[0]["method"] == "mahalanobis"
    assert calibration.calibrate(clf, texts, labels, target_rejection=0.05)[0]["method"] == "energy"
    with pytest.raises(UserError, match="--train-data"):
        calibration.calibrate(clf, texts, labels, method="knn", target_rejection=0.05)


def test_statistics_round_trip_and_refuse_a_changed_or_missing_file(tmp_path):
    clf = ToyClassifier(1)
    train = clf.rows(200, out=False)
    stats = calibration.fit_statistics(clf, *train)
    entry = oos_features.save(stats, tmp_path, "head_input")
    assert entry["file"].startswith("out_of_scope-") and entry["num_features"] == 4
    loaded = oos_features.load(tmp_path, entry, 2, "config.json")
    probe = np.random.default_rng(2).normal(0, 3, (20, 4))
    for method in oos_features.FEATURE_METHODS:
        assert np.allclose(loaded.score(probe, method), stats.score(probe, method), rtol=1e-3, atol=1e-3)
    path = tmp_path / entry["file"]
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF  # one flipped bit in the kNN bank
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="SHA-256 differs"):
        oos_features.load(tmp_path, entry, 2, "config.json")
    path.unlink()
    with pytest.raises(UserError, match="are missing from the model directory"):
        oos_features.load(tmp_path, entry, 2, "config.json")
    with pytest.raises(UserError, match="must name an out_of_scope-<digest>.safetensors file"):
        oos_features.load(tmp_path, {**entry, "file": "../model.safetensors"}, 2, "config.json")
    # a file that verifies but does not fit the model (3 classes here, 2 in the file)
    entry = oos_features.save(stats, tmp_path, "head_input")
    with pytest.raises(UserError, match="has class means of shape"):
        oos_features.load(tmp_path, entry, 3, "config.json")


# --- a real model: calibrate, predict, serve, the service ---------------------------------------------


@pytest.fixture(scope="module")
def calibrated(run, tmp_path_factory):
    """A copy of the tiny run calibrated with the Mahalanobis score on toy and gibberish rows."""
    root = tmp_path_factory.mktemp("oos")
    model = copy_run(run, root / "model")
    rows = toy_rows(60, 7) + [{"text": t, "label": "unknown"} for t in gibberish(30, 0)]
    data = write_jsonl(root / "calibration.jsonl", rows)
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--method", "mahalanobis",
                "--target-rejection", "0.1", "--precision", "fp32"]) == 0
    return model, [r["text"] for r in rows]


def expected_answers(model, texts):
    """The out-of-scope verdicts computed here from the saved statistics, independently of predict."""
    settings = json.loads((model / "config.json").read_text())[OOS_KEY]
    stats = oos_features.load(model, settings["statistics"], 2, "config.json")
    outputs = textft.load(model, precision="fp32", out_of_scope=False).outputs(texts, features=True)
    return list(stats.score(outputs.features, "mahalanobis") < settings["threshold"]), settings


def test_calibrate_stores_the_score_its_statistics_and_predict_uses_them(calibrated, capsys):
    model, texts = calibrated
    rejected, settings = expected_answers(model, texts)
    assert settings["method"] == "mahalanobis" and settings["statistics"]["representation"] == "head_input"
    assert (model / settings["statistics"]["file"]).is_file()
    assert list(model.glob("out_of_scope-*.safetensors")) == [model / settings["statistics"]["file"]]
    assert set(settings["calibration"]["methods"]) == {"msp", "energy", "mahalanobis", "knn"}
    assert sum(settings["calibration"]["histogram"]["out_of_scope"]) == 30
    res = textft.load(model, precision="fp32").predict(texts)
    assert [r["out_of_scope"] for r in res] == rejected and any(rejected)
    assert all(r["label"] == "out_of_scope" and r["model_label"] in ("neg", "pos") for r in res if r["out_of_scope"])
    # the report of the run shows the scores and the threshold
    report = json.loads((model / "report.json").read_text())
    assert report["out_of_scope"]["method"] == "mahalanobis"
    assert "out-of-scope scores" in (model / "report.html").read_text()
    # plain transformers still sees a plain classifier
    from transformers import pipeline

    assert pipeline("text-classification", model=str(model))("great")[0]["label"] in ("neg", "pos")
    # the feature score needs PyTorch: an explicit ONNX backend is refused with the reason
    with pytest.raises(UserError, match="reads the encoder's features"):
        textft.load(model, backend="onnx")


def test_calibrating_again_replaces_the_statistics_file(calibrated, tmp_path):
    model = copy_run(calibrated[0], tmp_path / "model")
    data = write_jsonl(tmp_path / "cal.jsonl", toy_rows(40, 8))
    assert cli(["calibrate", "--model", str(model), "--data", str(data), "--method", "msp", "--precision", "fp32"]) == 0
    assert json.loads((model / "config.json").read_text())[OOS_KEY]["method"] == "msp"
    assert not list(model.glob("out_of_scope-*.safetensors"))  # nothing names it any more


def test_a_changed_statistics_file_is_one_clear_error(calibrated, tmp_path, capsys):
    model = copy_run(calibrated[0], tmp_path / "model")
    stats = next(model.glob("out_of_scope-*.safetensors"))
    stats.write_bytes(stats.read_bytes()[:-8] + b"\0" * 8)
    (tmp_path / "in.txt").write_text("a good film\n")
    assert cli(["predict", "--model", str(model), "--input", str(tmp_path / "in.txt"),
                "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "SHA-256 differs" in err and "Traceback" not in err
    stats.unlink()
    assert cli(["serve", "--model", str(model)]) == 2
    assert "are missing from the model directory" in capsys.readouterr().err


def test_serve_answers_with_the_feature_score(calibrated, tmp_path):
    model, texts = calibrated
    rejected, _ = expected_answers(model, texts)
    with serve_process(model, tmp_path / "serve.log", "--precision", "fp32", "--max-texts", "128") as url:
        resp = httpx.post(url + "/predict", json={"inputs": texts}, timeout=60)
        assert resp.status_code == 200, resp.text
        assert [p["out_of_scope"] for p in resp.json()["predictions"]] == rejected
        meta = httpx.get(url + "/metadata").json()
        assert meta["out_of_scope"]["method"] == "mahalanobis" and meta["backend"] == "torch"


def test_the_service_model_cache_answers_with_the_feature_score(calibrated):
    from textft.service.models import ModelCache
    from textft.service.textft_api import batched_logits

    model, texts = calibrated
    rejected, _ = expected_answers(model, texts)

    async def predict():
        cache = ModelCache(device="cpu", threads=None)
        try:
            loaded = await cache.get("m", model)
            outputs = await batched_logits(loaded.batcher, [(t, None) for t in texts])
            return loaded.classifier.results(outputs), loaded.classifier
        finally:
            await cache.close()

    answers, clf = asyncio.run(predict())
    own = clf.predict(texts)
    assert [a["out_of_scope"] for a in answers] == [a["out_of_scope"] for a in own]
    assert sum(a != b for a, b in zip([a["out_of_scope"] for a in answers], rejected)) <= 2  # bf16 against fp32


def test_a_model_without_threshold_behaves_as_before(run):
    clf = textft.load(run, precision="fp32")
    texts = [r["text"] for r in toy_rows(20, 5)]
    outputs = clf.outputs(texts)
    assert outputs.in_scope is None and outputs.features is None
    res = clf.predict(texts)
    probs = softmax(clf.logits(texts).astype(np.float64))
    assert all("out_of_scope" not in r for r in res)
    assert [r["label"] for r in res] == [clf.labels[i] for i in probs.argmax(1)]
    assert [r["score"] for r in res] == pytest.approx(probs.max(1).tolist())
    assert not list(run.glob("out_of_scope-*"))


# --- training with known out-of-scope examples ----------------------------------------------------


@pytest.fixture(scope="module")
def oos_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("oos-data")

    def rows(n, seed):
        return toy_rows(n, seed) + [{"text": t, "label": "oos"} for t in gibberish(n // 4, seed)]

    return {split: write_jsonl(root / f"{split}.jsonl", rows(n, seed))
            for split, n, seed in (("train", 400, 1), ("validation", 80, 2), ("test", 80, 3))}


def test_training_with_oos_label_rejects_and_never_predicts_it_as_a_class(tiny_model_dir, oos_files, tmp_path,
                                                                             capsys):
    from textft.train import main as train_main

    out = tmp_path / "run"
    assert train_main([f"model.name_or_path={tiny_model_dir}", f"data.train_file={oos_files['train']}",
                       f"data.validation_file={oos_files['validation']}", f"data.test_file={oos_files['test']}",
                       "data.oos_label=oos", "data.max_length=32", "train.epochs=6", "train.batch_size=16",
                       "train.lr=3e-3", "train.mixed_precision=fp32", f"output.dir={out}"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["neg", "pos"]  # never a class
    settings = config[OOS_KEY]
    assert settings["label"] == "oos" and settings["target"] == {"rejection": 0.05}
    test = settings["evaluations"]["test"]
    assert test["num_out_of_scope"] == 20 and test["out_of_scope_recall"] > 0.5
    report = json.loads((out / "eval_report.json").read_text())
    assert report["splits"]["test"]["num_out_of_scope"] == 20 and report["splits"]["test"]["num_in_scope"] == 80
    rows = [json.loads(x) for x in (out / "predictions" / "test.jsonl").read_text().splitlines()]
    assert {r["pred"] for r in rows} <= {"neg", "pos", "oos"} and all(r["pred"] == "oos" for r in rows if r["out_of_scope"])
    texts = [json.loads(x)["text"] for x in oos_files["test"].read_text().splitlines()]
    answers = textft.load(out, precision="fp32").predict(texts)
    assert all(a["model_label"] in ("neg", "pos") for a in answers if a["out_of_scope"])
    assert all(a["label"] in ("neg", "pos") for a in answers if not a["out_of_scope"])
    assert sum(a["label"] == "oos" for a in answers[-20:]) > 10
    # plain transformers never answers the out-of-scope label: it is no class of the checkpoint
    from transformers import pipeline

    assert {p["label"] for p in pipeline("text-classification", model=str(out))(texts[-20:])} <= {"neg", "pos"}
    # the run's report shows the scores of both kinds and the threshold
    assert "out-of-scope scores" in (out / "report.html").read_text()
    # evaluate reads the out-of-scope rows as such; calibrate fits on the run's own training split
    capsys.readouterr()
    assert cli(["evaluate", "--model", str(out), "--data", str(oos_files["test"]), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_out_of_scope"] == 20 and metrics["num_in_scope"] == 80
    assert cli(["calibrate", "--model", str(out), "--data", str(oos_files["validation"]), "--dry-run"]) == 0
    assert "fitted on the run's 500 training texts" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,expected", [
    (["data.oos_label=ooss"], "'data.oos_label': 'ooss' is not a label of the train split"),
    (["data.oos_label=ooss"], "(did you mean 'oos'?); labels: neg, oos, pos"),
    (["data.oos_label=oos", "data.task=multi_label"], "'data.oos_label' names out-of-scope examples of a single_label"),
    (["train.oos_target_rejection=1.5"], "'train.oos_target_rejection' must be in [0, 1)"),
])
def test_oos_label_is_checked_before_training(overrides, expected, tiny_model_dir, oos_files, tmp_path, capsys):
    from textft.train import main as train_main

    assert train_main([f"model.name_or_path={tiny_model_dir}", f"data.train_file={oos_files['train']}",
                       "data.max_length=32", "train.mixed_precision=fp32", *overrides, f"output.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_validation_split_of_only_out_of_scope_rows_is_refused(tiny_model_dir, oos_files, tmp_path, capsys):
    from textft.train import main as train_main

    only = write_jsonl(tmp_path / "validation.jsonl", [{"text": t, "label": "oos"} for t in gibberish(10, 4)])
    assert train_main([f"model.name_or_path={tiny_model_dir}", f"data.train_file={oos_files['train']}",
                       f"data.validation_file={only}", "data.oos_label=oos", "data.max_length=32", "train.mixed_precision=fp32",
                       f"output.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "holds only out-of-scope rows ('oos' in column 'label')" in err and "Traceback" not in err
