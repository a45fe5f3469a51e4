"""`textft push`: the model card and the exact Hub calls, with the huggingface_hub client replaced
(the Hub cannot be reached from tests; this is the one stand-in the project allows)."""

import json
import logging
from pathlib import Path

import pytest
import yaml

import textft.hub as hub
from textft.cli import main as cli
from textft.hub import IGNORE_PATTERNS, push_to_hub
from textft.model_card import model_card
from tiny_classifier import copy_run, trained_run

TOKEN = "hf_NotARealTokenButLooksLikeOne1234"


@pytest.fixture(scope="module")
def run(tiny_model_dir, toy_files, tmp_path_factory):
    return trained_run(tiny_model_dir, toy_files, tmp_path_factory)


class FakeCommit:
    commit_url = "https://huggingface.co/me/tiny-sentiment/commit/abc123"


class FakeRepo:
    def __init__(self, repo_id):
        self.repo_id, self.url = repo_id, f"https://huggingface.co/{repo_id}"


class FakeHfApi:
    """Records every call; the real client would send it to the Hub."""

    calls: list = []
    fail_with: Exception | None = None

    def __init__(self, **kwargs):
        FakeHfApi.calls.append(("HfApi", kwargs))

    def create_repo(self, **kwargs):
        FakeHfApi.calls.append(("create_repo", kwargs))
        if FakeHfApi.fail_with is not None:
            raise FakeHfApi.fail_with
        return FakeRepo(kwargs["repo_id"])

    def upload_folder(self, **kwargs):
        # what would be uploaded: the files of the folder minus the ignored ones
        folder = Path(kwargs["folder_path"])
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        texts = {f: (folder / f).read_text(errors="replace") for f in files
                 if Path(f).suffix in (".md", ".json", ".yaml", ".html", ".jsonl", ".txt")}
        FakeHfApi.calls.append(("upload_folder", kwargs, files, texts))
        return FakeCommit()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeHfApi.calls, FakeHfApi.fail_with = [], None
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeHfApi


def front_matter(card) -> dict:
    """The card's metadata as the Hub reads it: the YAML block at the top of README.md."""
    text = str(card)
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def reloaded(card, tmp_path):
    """The card written as README.md and loaded back by huggingface_hub, as the Hub and other tools do."""
    from huggingface_hub import ModelCard

    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_push_makes_exactly_the_expected_calls_and_never_shows_the_token(run, fake_hub, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    model = copy_run(run, tmp_path / "tiny-sentiment")
    (model / "checkpoints").mkdir()
    (model / "checkpoints" / "optimizer.bin").write_bytes(b"resume state")
    assert cli(["push", "--model", str(model), "--repo-id", "me/tiny-sentiment", "--private"]) == 0
    assert [c[:2] for c in fake_hub.calls] == [
        ("HfApi", {}),  # no token argument: huggingface_hub reads HF_TOKEN / the login itself
        ("create_repo", {"repo_id": "me/tiny-sentiment", "private": True, "exist_ok": True, "repo_type": "model"}),
        ("upload_folder", {"repo_id": "me/tiny-sentiment", "folder_path": fake_hub.calls[2][1]["folder_path"],
                           "repo_type": "model", "commit_message": "Upload tiny-sentiment with textft",
                           "ignore_patterns": IGNORE_PATTERNS}),
    ]
    # the upload is a publishable copy inside the model directory, gone afterwards
    assert Path(fake_hub.calls[2][1]["folder_path"]).parent == model.resolve()
    assert list(model.glob(".publish-*")) == []
    uploaded = fake_hub.calls[2][2]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "eval_report.json"} <= set(uploaded)
    assert "checkpoints/*" in IGNORE_PATTERNS and "predictions/*" in IGNORE_PATTERNS
    out, err = capsys.readouterr()
    assert "pushed" in out and "me/tiny-sentiment" in out
    seen = out + err + caplog.text + repr(fake_hub.calls)
    seen += "".join(p.read_bytes().decode("utf-8", "replace") for p in model.rglob("*") if p.is_file())
    assert TOKEN not in seen


def test_card_metadata_and_body(run, tmp_path):
    model = copy_run(run, tmp_path / "imdb-model")
    cfg = yaml.safe_load((model / "textft_config.yaml").read_text())
    cfg["model"]["name_or_path"] = "bert-base-uncased"
    cfg["data"]["dataset"] = "imdb"
    (model / "textft_config.yaml").write_text(yaml.safe_dump(cfg))
    report = json.loads((model / "eval_report.json").read_text())
    card = model_card(model, license="apache-2.0", repo_id="me/imdb-model")
    meta = front_matter(card)
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "bert-base-uncased"
    assert meta["datasets"] == ["imdb"]
    assert meta["pipeline_tag"] == "text-classification"
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "imdb-model"
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"name": "imdb", "type": "imdb", "split": "test"}
    metrics = {(m["type"], m.get("args", {}).get("average")): m["value"] for m in result["metrics"]}
    assert metrics[("accuracy", None)] == round(report["splits"]["test"]["accuracy"], 4)
    assert metrics[("f1", "macro")] == round(report["splits"]["test"]["macro_f1"], 4)
    # the same metadata through huggingface_hub's own parser
    data = reloaded(card, tmp_path).data
    assert (data.license, data.base_model, data.datasets, data.model_name) == (
        "apache-2.0", "bert-base-uncased", ["imdb"], "imdb-model")
    results = {(r.metric_type, (r.metric_args or {}).get("average")): r for r in data.eval_results}
    assert {r.dataset_type for r in results.values()} == {"imdb"} and {r.dataset_split for r in results.values()} == {"test"}
    assert results[("f1", "weighted")].metric_value == round(report["splits"]["test"]["weighted_f1"], 4)
    body = card.text
    assert "| test | 80 |" in body and 'pipeline("text-classification", model="me/imdb-model")' in body
    assert 'classifier("Replace me by any text you like.", truncation=True)' in body
    assert "## Evaluation report" in body and "### test" in body and "#### Per class" in body  # report.md, demoted
    assert "`neg`, `pos`" in body


def test_card_without_hub_names_and_with_the_builtin_backbone(run, tmp_path):
    model = copy_run(run, tmp_path / "m")
    meta = front_matter(model_card(model))
    # the tiny test backbone is a local directory and the data local files: nothing to link on the Hub
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["license"] == "other"
    assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "train.jsonl", "type": "custom", "split": "test"}
    assert str(tmp_path.parent) not in str(model_card(model))  # no local paths in a public card
    cfg = yaml.safe_load((model / "textft_config.yaml").read_text())
    cfg["model"]["name_or_path"] = "builtin:minilm"
    (model / "textft_config.yaml").write_text(yaml.safe_dump(cfg))
    data = reloaded(model_card(model), tmp_path).data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0"  # read from the bundled backbone's own card


def test_report_json_is_preferred_over_eval_report(run, tmp_path):
    model = copy_run(run, tmp_path / "m")
    report = json.loads((model / "eval_report.json").read_text())
    report["splits"]["test"]["accuracy"] = 0.123456
    (model / "report.json").write_text(json.dumps(report))
    (model / "report.md").write_text("# Run report\n\nrich report body\n")
    card = model_card(model)
    assert front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.1235
    assert "rich report body" in card.text and "Run report" not in card.text  # the card has its own title


def test_out_of_scope_threshold_appears_in_the_card(run, tmp_path):
    model = copy_run(run, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["textft_out_of_scope"] = {"method": "msp", "threshold": 0.7, "label": "out_of_scope",
                                  "target": {"rejection": 0.05},
                                  "calibration": {"in_scope_accuracy": 0.9, "out_of_scope_recall": 0.8}}
    (model / "config.json").write_text(json.dumps(cfg))
    card = model_card(model)
    assert "## Out-of-scope rejection" in card.text and "0.7000" in card.text and "`out_of_scope`" in card.text


def test_push_problems_are_one_clear_error(run, fake_hub, tmp_path, monkeypatch, capsys):
    model = copy_run(run, tmp_path / "m")
    assert cli(["push", "--model", str(model), "--repo-id", "bad repo!"]) == 2
    assert "'--repo-id' must look like owner/name" in capsys.readouterr().err
    assert cli(["push", "--model", str(tmp_path / "nope"), "--repo-id", "me/x"]) == 2
    assert "does not exist" in capsys.readouterr().err

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert cli(["push", "--model", str(model), "--repo-id", "me/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert [c[0] for c in fake_hub.calls] == []  # nothing was attempted
    assert not (model / "README.md").exists()


def test_push_problems_for_a_training_preflight(fake_hub):
    from textft.hub import push_problems

    assert push_problems("me/model") == []
    assert push_problems(None, key="output.hub_repo_id") == [
        "'output.hub_repo_id' must look like owner/name (letters, digits, '-', '_', '.'), got 'None'"]


@pytest.mark.parametrize("repo_id,token,expected", [
    ("me/tiny", None, "no Hugging Face token"),
    ("me--/tiny!", TOKEN, "'output.hub_repo_id' must look like owner/name")])
def test_training_refuses_a_push_that_would_fail_before_it_starts(repo_id, token, expected, tiny_args, fake_hub,
                                                                  tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    rc = cli(["train", *tiny_args, "output.push_to_hub=true", f"output.hub_repo_id={repo_id}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() and fake_hub.calls == []


def test_push_uploads_no_local_paths_and_no_examples_unless_asked(run, fake_hub, tmp_path, capsys):
    model = copy_run(run, tmp_path / "model")
    # The tiny model makes no mistakes; give it a confident one for the report's mistakes section.
    rows = [json.loads(line) for line in (model / "predictions" / "test.jsonl").read_text().splitlines()]
    example = rows[0]["text"]
    rows[0].update(pred="neg" if rows[0]["label"] == "pos" else "pos", confidence=0.99)
    (model / "predictions" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(["report", str(model)]) == 0
    local_report = (model / "report.html").read_text()
    local = str(Path(run).parent.parent)  # the root of every path of the run: model, data, output
    assert local in (model / "textft_config.yaml").read_text()
    for flag, quoted in (([], False), (["--include-examples"], True)):
        fake_hub.calls.clear()
        assert cli(["push", "--model", str(model), "--repo-id", "me/tiny", *flag]) == 0
        _, _, files, texts = fake_hub.calls[-1]
        assert {"README.md", "report.html", "report.json", "report.md", "textft_config.yaml"} <= set(texts)
        assert [f for f, text in texts.items() if local in text] == []
        with_example = sorted(f for f, text in texts.items() if example in text)
        assert with_example == (["README.md", "report.html", "report.json", "report.md"] if quoted else [])
        if not quoted:
            assert "push --include-examples" in texts["report.md"] and "confident mistakes" in texts["report.html"]
            assert json.loads(texts["report.json"])["splits"]["test"].get("most_confident_mistakes") is None
    # the uploaded config still names its files, without their directories
    uploaded_cfg = yaml.safe_load(texts["textft_config.yaml"])
    assert uploaded_cfg["data"]["train_file"] == "train.jsonl" and uploaded_cfg["output"]["dir"] == "run"
    # the local run keeps everything
    assert (model / "report.html").read_text() == local_report and example in local_report
    capsys.readouterr()
    assert cli(["push", "--model", str(model), "--repo-id", "me/tiny", "--card-only"]) == 0
    card = capsys.readouterr().out
    assert "## Evaluation report" in card and example not in card and local not in card


def test_publishing_leaves_out_links_to_files_outside_the_model(run, fake_hub, tmp_path):
    model = copy_run(run, tmp_path / "model")
    (tmp_path / "secret.txt").write_text("not for the Hub")
    (model / "notes.txt").symlink_to(tmp_path / "secret.txt")
    (model / "extra").symlink_to(tmp_path, target_is_directory=True)
    assert cli(["push", "--model", str(model), "--repo-id", "me/tiny"]) == 0
    files = fake_hub.calls[-1][2]
    assert "notes.txt" not in files and not [f for f in files if f.startswith("extra")]
    assert "model.safetensors" in files


def test_hub_failure_is_reported_without_the_token(run, fake_hub, tmp_path, capsys):
    model = copy_run(run, tmp_path / "m")
    fake_hub.fail_with = RuntimeError(f"401 Unauthorized for Authorization: Bearer {TOKEN}")
    assert push_main_rc(model) == 2
    err = capsys.readouterr().err
    assert "could not create the repository 'me/x': 401 Unauthorized" in err
    assert TOKEN not in err and "Traceback" not in err


def push_main_rc(model):
    return cli(["push", "--model", str(model), "--repo-id", "me/x"])


def test_push_to_hub_function_for_training(run, fake_hub, tmp_path):
    model = copy_run(run, tmp_path / "m")
    url = push_to_hub(model, "me/m")
    assert url == FakeCommit.commit_url
    assert fake_hub.calls[1][1]["private"] is False
    assert (model / "README.md").read_text().startswith("---\n")
