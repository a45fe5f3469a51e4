"""model.transfer=lora: a real peft run on a tiny pretrained encoder; the merged run directory in a
plain pipeline, the adapter in peft and in textft, resume, the best model, regression, pushes and
config checks."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from textft.cli import main as cli
from textft.train import main
from tiny_classifier import trained_run

pytest.importorskip("peft")

TEXTS = ["the movie was great and the acting superb", "awful boring plot", "the ending was poor",
         "lovely music and a really good cast", "it was quite bad"]


@pytest.fixture(scope="module")
def encoder_dir(tiny_model_dir, toy_files, tmp_path_factory):
    """A tiny pretrained encoder without a classification head, like MiniLM: the encoder of the
    session's tiny classifier, saved as a BertModel."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = trained_run(tiny_model_dir, toy_files, tmp_path_factory)
    path = tmp_path_factory.mktemp("tiny-encoder")
    AutoModelForSequenceClassification.from_pretrained(run).bert.save_pretrained(path)
    AutoTokenizer.from_pretrained(run).save_pretrained(path)
    return path


@pytest.fixture
def lora_args(encoder_dir, toy_files, tmp_path):
    return [f"model.name_or_path={encoder_dir}", "model.transfer=lora", f"data.train_file={toy_files['train']}",
            f"data.validation_file={toy_files['validation']}", f"data.test_file={toy_files['test']}",
            "data.max_length=32", "train.epochs=2", "train.batch_size=16", "train.mixed_precision=fp32",
            "train.logging_steps=5", f"output.dir={tmp_path / 'run'}"]


@pytest.fixture(scope="module")
def lora_run(encoder_dir, toy_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    assert main([f"model.name_or_path={encoder_dir}", "model.transfer=lora", f"data.train_file={toy_files['train']}",
                 f"data.validation_file={toy_files['validation']}", f"data.test_file={toy_files['test']}",
                 "data.max_length=32", "train.epochs=2", "train.batch_size=16", "train.mixed_precision=fp32",
                 f"output.dir={out}"]) == 0
    return out


def report(run: Path) -> dict:
    return json.loads((run / "eval_report.json").read_text())


def test_a_lora_run_trains_adapters_and_the_head_and_exports_a_plain_classifier(lora_run, encoder_dir):
    r = report(lora_run)
    assert r["splits"]["test"]["accuracy"] >= 0.9
    assert r["config"]["model"]["transfer"] == "lora"
    # the auto recipe chose LoRA's rates and said why
    assert r["recipe"]["train.lr"].startswith("LoRA:") and "full fine-tuning" in r["recipe"]["train.head_lr"]
    assert r["parameters"]["trainable"] < r["parameters"]["total"] / 3
    # the run directory is a plain classifier: no peft names, the base's tensors plus the head
    merged = load_file(lora_run / "model.safetensors")
    assert not [k for k in merged if "lora" in k or "base_layer" in k or "modules_to_save" in k]
    base = load_file(encoder_dir / "model.safetensors")
    assert {f"bert.{k}" for k in base} | {"classifier.weight", "classifier.bias"} == set(merged)
    # the adapters moved every targeted weight; the embeddings stayed frozen
    assert not torch.equal(merged["bert.encoder.layer.0.attention.self.query.weight"],
                           base["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(merged["bert.embeddings.word_embeddings.weight"], base["embeddings.word_embeddings.weight"])


def test_the_merged_model_loads_in_a_plain_pipeline_with_textfts_labels(lora_run):
    from transformers import pipeline

    import textft

    plain = [p["label"] for p in pipeline("text-classification", model=str(lora_run), device="cpu")(TEXTS)]
    ours = [p["label"] for p in textft.load(lora_run, precision="fp32").predict(TEXTS)]
    assert plain == ours and set(plain) == {"pos", "neg"}
    # the evaluation report scores the exported weights
    preds = [json.loads(line) for line in (lora_run / "predictions" / "test.jsonl").read_text().splitlines()]
    again = textft.load(lora_run, precision="fp32").predict([p["text"] for p in preds])
    assert [p["pred"] for p in preds] == [a["label"] for a in again]


def test_the_adapter_is_peft_format_and_loads_in_peft_and_textft_with_identical_logits(lora_run):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import textft

    adapter = lora_run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "textft_adapter.json", "tokenizer.json",
            "textft_config.yaml"} <= {p.name for p in adapter.iterdir()}
    assert not (adapter / "config.json").exists()  # transformers would take the directory for a full model
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_A" in k for k in tensors) and any(k.endswith("classifier.weight") for k in tensors)
    assert any("pooler" in k for k in tensors)  # lora_train_pooler defaults to true
    assert (adapter / "adapter_model.safetensors").stat().st_size < (lora_run / "model.safetensors").stat().st_size / 2
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS" and config["r"] == 8

    classifier = json.loads((adapter / "textft_adapter.json").read_text())["classifier_config"]
    labels = {int(k): v for k, v in classifier["id2label"].items()}
    peft_model = AutoPeftModelForSequenceClassification.from_pretrained(
        adapter, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(lora_run).eval()
    batch = AutoTokenizer.from_pretrained(adapter)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=1e-5)
    from_adapter, from_run = textft.load(adapter, precision="fp32"), textft.load(lora_run, precision="fp32")
    assert from_adapter.labels == from_run.labels == ["neg", "pos"]
    assert (from_adapter.logits(TEXTS) == from_run.logits(TEXTS)).all()


def test_save_adapter_false_writes_only_the_merged_model(lora_args, tmp_path, caplog):
    # with activation checkpointing: the frozen embeddings give the first layer inputs without grad
    assert main([*lora_args, "train.max_steps=3", "output.save_adapter=false", "train.gradient_checkpointing=true",
                 "model.layer_lr_decay=0.8"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file() and not (tmp_path / "run" / "adapter").exists()
    assert "activation checkpointing: 2 layers" in caplog.text
    params = report(tmp_path / "run")["parameters"]
    # the total is the classifier plus its adapters (peft's untrained copy of the head is no part of it):
    # rank 8 on 2 layers x (4 linear 32->32 + 32->64 + 64->32)
    lora = 2 * (4 * 8 * (32 + 32) + 2 * 8 * (32 + 64))
    merged = sum(v.numel() for v in load_file(tmp_path / "run" / "model.safetensors").values())
    assert params["total"] == merged + lora


def test_resume_of_a_lora_run_is_bit_identical(lora_args, tmp_path):
    """lora_dropout draws random numbers: the checkpoint's RNG state must bring them back."""
    args = [*lora_args[:-1], "train.save_every_steps=10", "train.keep_checkpoints=5", "train.eval_every_steps=10"]
    full = tmp_path / "full"
    assert main([*args, f"output.dir={full}"]) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    assert main([*args, f"output.dir={resumed}", f"train.resume_from={resumed / 'checkpoints' / 'step-30'}"]) == 0
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert report(resumed)["splits"] == report(full)["splits"]
    assert report(resumed)["resumed_from"].endswith("step-30")
    # a LoRA checkpoint is not a full fine-tuning run's
    assert main([*args[:1], "model.transfer=full", *args[2:], f"output.dir={resumed}",
                 f"train.resume_from={resumed / 'checkpoints' / 'step-30'}"]) == 2


def test_early_stopping_exports_the_best_adapter_not_the_last(lora_args, tmp_path):
    # A min_delta no loss can beat keeps the first evaluation (step 2) as the best one for good, and
    # two evaluations without improvement (steps 4 and 6) stop the run.
    args = [*lora_args[:-1], "train.max_steps=20", "train.eval_every_steps=2", "train.metric_for_best=loss",
            "train.early_stopping_min_delta=100", "train.early_stopping_patience=2", "train.save_every_steps=4",
            "train.lr=5e-2", f"output.dir={tmp_path / 'run'}"]
    assert main(args) == 0
    r = report(tmp_path / "run")
    assert r["best"]["step"] == 2 and r["stop_reason"] == "early_stopping" and r["optimizer_steps"] == 6
    exported = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    last = load_file(tmp_path / "run" / "checkpoints" / "step-4" / "model.safetensors")
    key = next(k for k in exported if "lora_B" in k)
    assert not torch.equal(exported[key], last[key.replace("lora_B.weight", "lora_B.default.weight")])


def test_regression_heads_answer_in_label_units_from_the_adapter_too(encoder_dir, task_files, tmp_path):
    import textft

    files = task_files["regression"]
    out = tmp_path / "run"
    assert main([f"model.name_or_path={encoder_dir}", "model.transfer=lora", f"data.train_file={files['train']}",
                 f"data.validation_file={files['validation']}", f"data.test_file={files['test']}",
                 "data.label_column=score", "data.max_length=32", "train.max_steps=20", "train.batch_size=16",
                 "train.mixed_precision=fp32", f"output.dir={out}"]) == 0
    texts = [json.loads(line)["text"] for line in files["test"].read_text().splitlines()[:20]]
    merged, adapter = textft.load(out, precision="fp32"), textft.load(out / "adapter", precision="fp32")
    values = [p["value"] for p in merged.predict(texts)]
    assert [p["value"] for p in adapter.predict(texts)] == pytest.approx(values, abs=1e-5)
    assert 0 < sum(values) / len(values) < 12  # label units (1 to 8.5), not standardised ones


def test_config_checks_of_the_lora_keys_report_every_problem(lora_args, capsys):
    assert main([*lora_args, "model.lora_rank=0", "model.lora_alpha=-1", "model.lora_dropout=1.5",
                 "model.lora_target_modules=[]"]) == 2
    err = capsys.readouterr().err
    assert "'model.lora_rank' must be >= 1, got 0" in err and "'model.lora_alpha' must be > 0" in err
    assert "'model.lora_dropout' must be in [0, 1), got 1.5" in err and "'model.lora_target_modules' must name" in err
    assert "Traceback" not in err


def test_an_unknown_target_module_names_the_closest_layer(lora_args, capsys):
    assert main([*lora_args, "model.lora_target_modules=[qurey,value,dens]"]) == 2
    err = capsys.readouterr().err
    assert "no linear layer named 'qurey' (did you mean 'query'?)" in err
    assert "no linear layer named 'dens' (did you mean 'dense'?)" in err
    assert "query, key, value, attention.output.dense, intermediate.dense, output.dense" in err
    assert "Traceback" not in err


def test_target_modules_as_names_separated_by_commas_select_only_those_layers(lora_args, tmp_path):
    assert main([*lora_args, "model.lora_target_modules=query,value", "model.lora_train_pooler=false",
                 "train.max_steps=2"]) == 0
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}"
                                                      for i in (0, 1) for m in ("query", "value"))
    tensors = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert not any("pooler" in k for k in tensors)


def test_a_rank_beyond_the_hidden_size_and_save_adapter_without_lora_are_errors(lora_args, capsys):
    assert main([*lora_args, "model.lora_rank=64"]) == 2
    assert "'model.lora_rank' 64 exceeds the encoder's hidden size (32)" in capsys.readouterr().err
    full = [a for a in lora_args if a != "model.transfer=lora"]
    assert main([*full, "output.save_adapter=true"]) == 2
    assert "'output.save_adapter' writes the LoRA adapter, and model.transfer is auto" in capsys.readouterr().err


def test_push_either_the_merged_model_or_the_adapter(lora_run, monkeypatch, tmp_path, capsys):
    from test_hub import FakeHfApi, TOKEN

    import textft.hub as hub

    FakeHfApi.calls, FakeHfApi.fail_with = [], None
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = tmp_path / "tiny-lora"
    shutil.copytree(lora_run, run)
    assert cli(["push", "--model", str(run), "--repo-id", "me/tiny-lora"]) == 0
    merged_files = FakeHfApi.calls[-1][2]
    assert "model.safetensors" in merged_files and not [f for f in merged_files if f.startswith("adapter")]
    assert cli(["push", "--model", str(run), "--repo-id", "me/tiny-lora-adapter", "--adapter"]) == 0
    files, texts = FakeHfApi.calls[-1][2], FakeHfApi.calls[-1][3]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert "model.safetensors" not in files
    card = texts["README.md"]
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "AutoPeftModelForSequenceClassification" in card and "id2label={0: 'neg', 1: 'pos'}" in card
    assert "| test |" in card  # the run's results, read from the run directory
    assert str(tmp_path) not in "".join(texts.values())  # no local path published
    # the adapter directory itself is pushed as the adapter
    assert cli(["push", "--model", str(run / "adapter"), "--repo-id", "me/tiny-lora-adapter"]) == 0
    assert "adapter_model.safetensors" in FakeHfApi.calls[-1][2]
    # a run without an adapter says so
    shutil.rmtree(run / "adapter")
    assert cli(["push", "--model", str(run), "--repo-id", "me/x", "--adapter"]) == 2
    assert "has no LoRA adapter" in capsys.readouterr().err


def test_the_recipe_gives_lora_its_own_lr_and_the_head_that_of_full_fine_tuning():
    from test_recipe import auto

    from textft.recipe import HEAD_LR_MULTIPLIER, LORA_LR_MULTIPLIER

    full, _ = auto()
    lora, why = auto("model.transfer=lora")
    assert lora.train.lr == pytest.approx(LORA_LR_MULTIPLIER * full.train.lr)
    assert lora.train.head_lr == pytest.approx(HEAD_LR_MULTIPLIER * full.train.lr) == full.train.head_lr
    assert why["train.lr"].startswith("LoRA:") and "benchmarks/recipes.md" in why["train.lr"]
    # and 1.5 times the steps: 616 for 77 classes under full fine-tuning, 924 under LoRA
    assert round(lora.train.epochs * 282) == 924 and round(full.train.epochs * 282) == 616
    assert "x 1.5 under LoRA" in why["train.epochs"]
    # an explicit lr wins; the head keeps the full fine-tuning rate of the encoder's size
    explicit, _ = auto("model.transfer=lora", "train.lr=1e-3")
    assert explicit.train.lr == 1e-3 and explicit.train.head_lr == full.train.head_lr


def test_reports_and_comparisons_name_the_adapter_settings(lora_run):
    from textft.compare import compare

    assert "lora (rank 8, alpha 16 on all-linear)" in (lora_run / "report.md").read_text()
    _, table, _, _ = compare([str(lora_run)])
    assert "| lora (rank 8) |" in table


def test_calibrating_an_adapter_stores_the_threshold_in_its_record(lora_run, tmp_path, capsys):
    from conftest import toy_rows, write_jsonl
    from peft import PeftConfig

    import textft
    from textft.calibration import OOS_KEY

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "adapter", adapter)
    data = write_jsonl(tmp_path / "calibration.jsonl",
                       toy_rows(60, 7) + [{"text": "qx zj kv the movie", "label": "unknown"}] * 10)
    assert cli(["calibrate", "--model", str(adapter), "--data", str(data), "--target-rejection", "0.1",
                "--precision", "fp32"]) == 0
    assert "textft_adapter.json" in capsys.readouterr().out
    record = json.loads((adapter / "textft_adapter.json").read_text())
    assert record["classifier_config"][OOS_KEY]["label"] == "out_of_scope"
    assert not (adapter / "config.json").exists() and PeftConfig.from_pretrained(adapter).r == 8
    assert textft.load(adapter, precision="fp32").out_of_scope["threshold"] == record["classifier_config"][OOS_KEY][
        "threshold"]


def test_a_sweep_searches_the_lora_keys(encoder_dir, toy_files, tmp_path):
    import optuna

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train_file": str(toy_files["train"]), "validation_file": str(toy_files["validation"]),
                 "max_length": 32},
        "model": {"name_or_path": str(encoder_dir), "transfer": "lora"},
        "train": {"max_steps": 4, "batch_size": 16, "mixed_precision": "fp32"},
        "sweep": {"metric": "macro_f1", "startup_trials": 2, "space": {
            "model.lora_rank": {"type": "categorical", "choices": [2, 4]},
            "model.lora_target_modules": {"type": "categorical", "choices": ["query,value", "all-linear"]}}}}))
    out = tmp_path / "sweep"
    assert cli(["sweep", "--config", str(config), "--trials", "2", "--output", str(out)]) == 0
    trials = optuna.load_study(study_name="textft-sweep", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        adapter = json.loads((out / "trials" / f"trial-{t.number}" / "adapter" / "adapter_config.json").read_text())
        assert adapter["r"] == t.params["model.lora_rank"]
        assert len(adapter["target_modules"]) == (4 if t.params["model.lora_target_modules"] == "query,value" else 12)


def test_broken_adapter_directories_are_one_clear_error_each(lora_run, tmp_path):
    import textft
    from textft.errors import UserError

    def broken(name, change):
        path = tmp_path / name
        shutil.copytree(lora_run / "adapter", path)
        change(path)
        with pytest.raises(UserError) as e:
            textft.load(path)
        return str(e.value)

    def pickled(p):
        (p / "adapter_model.safetensors").rename(p / "adapter_model.bin")

    assert "only adapter_model.bin, a pickle" in broken("pickle", pickled)
    assert "cannot be read" in broken("config", lambda p: (p / "adapter_config.json").write_text("{not json"))
    assert "not valid JSON" in broken("record", lambda p: (p / "textft_adapter.json").write_text("[1,"))

    def elsewhere(p):
        record = json.loads((p / "textft_adapter.json").read_text())
        record["base_model"]["name_or_path"] = str(tmp_path / "gone")
        (p / "textft_adapter.json").write_text(json.dumps(record))
        config = json.loads((p / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(tmp_path / "gone")
        (p / "adapter_config.json").write_text(json.dumps(config))

    message = broken("base", elsewhere)
    assert "could not load the adapter" in message and "gone" in message and "Traceback" not in message
