"""textft checkpoints behave like the rest of the Hugging Face stack: a plain ``pipeline`` truncates as
training did, models are named by hub id as well as by directory (offline: one clear error), and hub
datasets with several configurations evaluate by name."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import textft
from conftest import FILLER, NEG, POS, write_jsonl
from textft.cli import main as cli
from textft.config import UserError
from tiny_classifier import trained_run


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


@pytest.fixture(scope="module")
def long_texts():
    """Longer than the 32 training tokens, with a verdict at the start for some and at the end for others."""
    rng = np.random.default_rng(3)
    texts = []
    for i in range(40):
        fillers = " ".join(rng.choice(FILLER, 40))
        word = str(rng.choice(POS if i % 2 else NEG))
        texts.append(f"{word} {fillers}" if i % 4 < 2 else f"{fillers} {word}")
    return texts


def pipeline_results(model_dir, texts):
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(model_dir), device="cpu")
    return pipe(texts, batch_size=8, truncation=True)  # no max_length: the saved tokenizer knows it


def test_plain_pipeline_reproduces_a_head_model(run, long_texts):
    tokenizer_config = json.loads((Path(run) / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == 32 and tokenizer_config["truncation_side"] == "right"
    got = textft.load(run, precision="fp32").predict(long_texts)
    expected = pipeline_results(run, long_texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected]  # 100% agreement
    assert np.allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)


@pytest.fixture(scope="module")
def tail_run(run, toy_files, tmp_path_factory):
    """A few tail-truncated steps on top of the trained classifier: a real tail run that tells texts apart."""
    from textft.train import main as train_main

    out = tmp_path_factory.mktemp("tail") / "run"
    assert train_main([f"model.name_or_path={run}", f"data.train_file={toy_files['train']}",
                       f"data.validation_file={toy_files['validation']}", "data.max_length=16",
                       "data.truncation=tail", "train.max_steps=5", "train.lr=1e-4", "train.mixed_precision=fp32",
                       f"output.dir={out}"]) == 0
    return out


@pytest.mark.slow
def test_a_tail_model_reports_tail_and_a_plain_pipeline_reproduces_it(tail_run, long_texts):
    clf = textft.load(tail_run, precision="fp32")
    assert clf.long_text == "tail" and clf.describe()["long_text"] == "tail" and clf.max_length == 16
    got = clf.predict(long_texts)
    expected = pipeline_results(tail_run, long_texts)
    assert [g["label"] for g in got] == [e["label"] for e in expected]
    assert np.allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-5)
    # the side matters for these texts: their heads get other labels
    head = textft.load(tail_run, precision="fp32", long_text="head").predict(long_texts)
    assert sum(g["label"] != h["label"] for g, h in zip(got, head)) >= 10


# --- hub ids ----------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache of this test's own (the machine's cache is never consulted)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, model_dir: Path) -> None:
    """``repo_id`` as snapshot_download leaves it in the cache: a snapshot folder and the ref to it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dir, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("checkpoints"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_from_the_cache_offline(run, hub_cache, tmp_path, capsys):
    cache_repo(hub_cache, "me/tiny-sentiment", run)
    by_id = textft.load("me/tiny-sentiment", precision="fp32")
    by_dir = textft.load(run, precision="fp32")
    texts = ["the film was excellent", "an awful boring plot"]
    assert by_id.predict(texts) == by_dir.predict(texts) and by_id.long_text == "head"
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert cli(["predict", "--model", "me/tiny-sentiment", "--input", str(tmp_path / "in.txt"),
                "--output", str(tmp_path / "out.jsonl"), "--precision", "fp32", "--no-progress"]) == 0
    assert [json.loads(x)["label"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == ["pos", "neg"]


def test_a_hub_id_offline_and_not_cached_is_one_clear_error(hub_cache, tmp_path, capsys):
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 forbids downloading it"):
        textft.load("someone/not-downloaded")
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": "pos"}])
    commands = {"predict": ["--input", str(data), "--output", str(tmp_path / "o.jsonl")],
                "evaluate": ["--data", str(data)], "calibrate": ["--data", str(data)], "serve": []}
    for command, args in commands.items():
        assert cli([command, "--model", "someone/not-downloaded", *args]) == 2, command
        err = capsys.readouterr().err
        assert err.count("error: ") == 1 and "'someone/not-downloaded' is not a local directory" in err \
            and "HF_HUB_OFFLINE" in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(UserError, match="directory '.*nope' does not exist"):
        textft.load(tmp_path / "nope")
    with pytest.raises(UserError, match="directory 'runs/nope/x' does not exist"):
        textft.load("runs/nope/x")


# --- hub datasets with several configurations --------------------------------------------------------


def test_evaluate_a_dataset_configuration(run, tmp_path, capsys):
    # A dataset repository (here a local directory laid out as on the Hub) with two configurations.
    repo = tmp_path / "reviews"
    for name, n in (("short", 6), ("long", 10)):
        (repo / name).mkdir(parents=True)
        write_jsonl(repo / name / "test.jsonl", [{"text": f"the film was {'excellent' if i % 2 else 'awful'}",
                                                  "label": "pos" if i % 2 else "neg"} for i in range(n)])
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {name}\n  data_files:\n  - split: test\n    path: {name}/test.jsonl\n"
        for name in ("short", "long")) + "---\n")
    for name, n in (("short", 6), ("long", 10)):
        assert cli(["evaluate", "--model", str(run), "--data", str(repo), "--dataset-config", name, "--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["num_examples"] == n and metrics["settings"]["data_source"].endswith("[test]")
    assert cli(["evaluate", "--model", str(run), "--data", str(repo), "--dataset-config", "medium"]) == 2
    assert "medium" in capsys.readouterr().err

