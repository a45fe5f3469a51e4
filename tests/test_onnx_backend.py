"""The ONNX Runtime prediction backend on a tiny trained classifier: export, agreement with PyTorch,
the cache (reuse, invalidation when the weights change, damaged entries rebuilt), int8 with its
measured agreement, and the fall-back to PyTorch."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import textft  # noqa: E402
from conftest import toy_rows  # noqa: E402
from textft import onnx_backend, onnx_export  # noqa: E402
from textft.cli import main as cli  # noqa: E402
from textft.config import UserError  # noqa: E402
from tiny_classifier import copy_run, trained_run  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_model_dir, toy_files, tmp_path_factory):
    """A copy of the tiny run with its fp32 and int8 exports already cached."""
    run = copy_run(trained_run(tiny_model_dir, toy_files, tmp_path_factory),
                   tmp_path_factory.mktemp("onnx") / "run")
    textft.load(run, precision="fp32", backend="onnx")
    textft.load(run, precision="int8", backend="onnx")
    return run


@pytest.fixture(scope="module")
def texts():
    # lengths 5..15 words, and a few long ones that the 32-token limit truncates
    return [r["text"] for r in toy_rows(60, 21)] + [" ".join(["the film was good"] * 20), "bad"]


def entries(run):
    return sorted(p.parent.name for p in (run / "onnx").glob("*/meta.json"))


def test_onnx_fp32_agrees_with_torch(exported, texts):
    torch_clf = textft.load(exported, precision="fp32", backend="torch")
    onnx_clf = textft.load(exported, precision="fp32", backend="onnx")
    assert onnx_clf.backend == "onnx" and onnx_clf.precision == "fp32" and torch_clf.backend == "torch"
    a, b = torch_clf.logits(texts, batch_size=7), onnx_clf.logits(texts, batch_size=7)
    assert np.allclose(a, b, atol=1e-4)  # padded batches of several lengths, batch sizes 7 and 6
    assert [p["label"] for p in torch_clf.predict(texts)] == [p["label"] for p in onnx_clf.predict(texts)]
    assert onnx_clf.describe()["backend"] == "onnx" and onnx_clf.describe()["onnx"]["cache"].startswith(str(exported))


def test_cache_is_reused(exported, texts, monkeypatch):
    before = entries(exported)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(onnx_export, "export_fp32", no_export)
    monkeypatch.setattr(onnx_export, "quantize_int8", no_export)
    assert textft.load(exported, precision="fp32", backend="onnx").backend == "onnx"
    assert textft.load(exported, precision="int8", backend="onnx").precision == "int8"
    assert entries(exported) == before and len(before) == 2


def test_changed_weights_get_a_new_export(exported, texts, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    run = copy_run(exported, tmp_path / "run")
    old = set(entries(run))
    model = AutoModelForSequenceClassification.from_pretrained(run)
    with torch.no_grad():
        model.classifier.bias += torch.tensor([2.0, -2.0])  # shifts every prediction towards label 0
    model.save_pretrained(run)
    clf = textft.load(run, precision="fp32", backend="onnx")
    new = set(entries(run))
    assert new and not new & old  # a new entry; the stale ones are gone
    expected = textft.load(run, precision="fp32", backend="torch").logits(texts)
    assert np.allclose(clf.logits(texts), expected, atol=1e-4)


@pytest.mark.parametrize("damage", ["truncated model", "garbage model", "bad meta"])
def test_damaged_cache_entry_is_refused_and_rebuilt(exported, texts, tmp_path, damage, caplog):
    run = copy_run(exported, tmp_path / "run")
    fp32 = next(p.parent for p in (run / "onnx").glob("*/meta.json")
                if json.loads(p.read_text())["settings"]["precision"] == "fp32")
    model = fp32 / "model.onnx"
    if damage == "truncated model":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "garbage model":
        model.write_bytes(b"\x08\x07not an onnx graph" * 100)
    else:
        (fp32 / "meta.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="textft"):
        clf = textft.load(run, precision="fp32", backend="onnx")
    assert "damaged" in caplog.text and "rebuilding" in caplog.text
    meta = json.loads((fp32 / "meta.json").read_text())
    assert meta["sha256"] == onnx_export.file_sha256(model)
    expected = textft.load(run, precision="fp32", backend="torch").logits(texts)
    assert np.allclose(clf.logits(texts), expected, atol=1e-4)


def test_int8_comes_with_its_measured_agreement(exported, texts, tmp_path, capsys):
    clf = textft.load(exported, precision="int8", backend="onnx")
    quality = clf.describe()["onnx"]["quality"]
    # measured on the run's own validation texts (predictions/validation.jsonl), against fp32
    n_validation = len((exported / "predictions" / "validation.jsonl").read_text().splitlines())
    assert quality["texts"] == n_validation and 0.9 <= quality["agreement"] <= 1.0
    assert 0.5 < quality["accuracy_int8"] <= 1.0 and 0.5 < quality["accuracy_fp32"] <= 1.0
    fp32 = textft.load(exported, precision="fp32", backend="onnx")
    same = np.mean(clf.logits(texts).argmax(-1) == fp32.logits(texts).argmax(-1))
    assert same >= 0.9
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts[:10]) + "\n")
    rc = cli(["predict", "--model", str(exported), "--input", str(src), "--output", str(tmp_path / "out.jsonl"),
              "--backend", "onnx", "--precision", "int8", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "onnx int8" in err and f"int8 answers equal to fp32 on {100 * quality['agreement']:.2f}%" in err


def test_auto_keeps_a_tiny_model_on_torch_and_writes_nothing(tiny_model_dir, toy_files, tmp_path_factory, tmp_path):
    """Below MIN_AUTO_PARAMETERS auto never exports: the shared test runs stay as trained."""
    run = copy_run(trained_run(tiny_model_dir, toy_files, tmp_path_factory), tmp_path / "run")
    for precision in ("auto", "int8", "fp32"):
        clf = textft.load(run, precision=precision)
        assert clf.backend == "torch" and clf.runner is None
    assert not (run / "onnx").exists()


@pytest.fixture
def big_enough(monkeypatch):
    """The tiny model counted as one auto runs on ONNX Runtime."""
    monkeypatch.setattr(onnx_backend, "MIN_AUTO_PARAMETERS", 0)


def auto_without_int8():
    import torch

    from textft.precision import inference_precision

    return ("torch", inference_precision("auto", torch.device("cpu")))


def test_auto_without_int8_stays_on_pytorch_on_a_cpu_without_bf16(exported, big_enough, monkeypatch):
    """Measured with fp32 forced (BENCHMARKS.md): PyTorch fp32 1.28x the batched pipeline, ONNX Runtime
    fp32 1.15x; auto takes ONNX Runtime only for a verified int8."""
    import textft.precision

    monkeypatch.setattr(textft.precision, "cpu_supports_bf16", lambda: False)
    clf = textft.load(exported)
    assert (clf.backend, clf.precision) == ("torch", "fp32") and clf.runner is None
    assert textft.load(exported, backend="onnx").backend == "onnx"  # still there on request


def test_auto_needs_enough_validation_texts_for_int8(exported, big_enough, monkeypatch):
    """80 validation texts cannot show 99.5% agreement: auto does not pick int8 whatever they show."""
    n_validation = len((exported / "predictions" / "validation.jsonl").read_text().splitlines())
    assert n_validation < onnx_backend.MIN_VERIFY_TEXTS
    clf = textft.load(exported)
    assert (clf.backend, clf.precision) == auto_without_int8()
    # enough texts: int8 exactly when its measured agreement reaches the floor
    monkeypatch.setattr(onnx_backend, "MIN_VERIFY_TEXTS", n_validation)
    quality = textft.load(exported, precision="int8", backend="onnx").describe()["onnx"]["quality"]
    clf = textft.load(exported)
    if quality["agreement"] >= onnx_backend.AGREEMENT_FLOOR:
        assert (clf.backend, clf.precision) == ("onnx", "int8")
        assert clf.describe()["onnx"]["quality"] == quality
    monkeypatch.setattr(onnx_backend, "AGREEMENT_FLOOR", 1.01)  # above any agreement: never int8
    assert (textft.load(exported).backend, textft.load(exported).precision) == auto_without_int8()


def test_int8_safety_rule():
    enough = onnx_backend.MIN_VERIFY_TEXTS
    assert onnx_backend.int8_is_safe({"texts": enough, "agreement": 0.995})
    assert not onnx_backend.int8_is_safe({"texts": enough, "agreement": 0.994})
    assert not onnx_backend.int8_is_safe({"texts": enough - 1, "agreement": 1.0})
    assert not onnx_backend.int8_is_safe({"texts": enough, "agreement": None, "max_abs_difference": 0.0})
    assert not onnx_backend.int8_is_safe(None)


def test_checkpoint_without_validation_texts_is_not_quantised_by_default(exported, big_enough, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "MIN_VERIFY_TEXTS", 1)
    run = copy_run(exported, tmp_path / "run")
    (run / "predictions" / "validation.jsonl").unlink()
    clf = textft.load(run)
    assert clf.precision != "int8"
    int8 = textft.load(run, precision="int8", backend="onnx")  # still available on request
    assert int8.precision == "int8"


def test_explicit_fp32_stays_on_torch_under_auto(exported, big_enough):
    """fp32 is the reference precision (textft evaluate's default): auto keeps it on PyTorch."""
    assert textft.load(exported, precision="fp32").backend == "torch"


def test_without_onnxruntime_auto_falls_back_to_torch(exported, big_enough, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a failed import leaves behind
    assert onnx_backend.unavailable_reason() is not None
    clf = textft.load(exported, precision="int8")
    assert clf.backend == "torch" and clf.runner is None
    with pytest.raises(UserError, match="'--backend': onnx is unavailable here: onnxruntime is not installed"):
        textft.load(exported, precision="fp32", backend="onnx")


def test_bad_backend_choices(exported):
    with pytest.raises(UserError, match="did you mean 'onnx'"):
        textft.load(exported, backend="onxx")
    with pytest.raises(UserError, match="onnx runs fp32 or int8, not bf16"):
        textft.load(exported, backend="onnx", precision="bf16")
    assert textft.load(exported, precision="bf16").backend == "torch"  # auto: bf16 is PyTorch's
