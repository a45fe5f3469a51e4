import pytest
import yaml

from textft.cli import main as cli
from textft.config import Config, UserError, load_config, save_config
from textft.presets import presets


@pytest.mark.parametrize("name", presets("train"))
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.model.name_or_path and cfg.output.dir


def test_shipped_recipes_match_their_promise():
    imdb = load_config("imdb")
    assert (imdb.data.dataset, imdb.model.name_or_path) == ("imdb", "bert-base-uncased")
    assert (imdb.data.max_length, imdb.train.lr, imdb.train.epochs) == (512, 2e-5, 2)
    assert load_config("banking77").data.dataset == "PolyAI/banking77"
    assert load_config("quickstart").model.name_or_path == "builtin:minilm"
    assert load_config("tiny").model.random_init is True


def test_overrides_win_over_file_and_are_typed():
    cfg = load_config("imdb", ["train.lr=3e-5", "train.epochs=1", "data.truncation=tail",
                                            "data.label_names=[neg,pos]", "output.dir=/tmp/x"])
    assert cfg.train.lr == pytest.approx(3e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 1.0 and cfg.data.truncation == "tail"
    assert cfg.data.label_names == ["neg", "pos"] and cfg.output.dir == "/tmp/x"
    assert cfg.data.max_length == 512  # untouched keys keep the file's value


def problems(*overrides, path="tiny"):
    with pytest.raises(UserError) as e:
        load_config(path, list(overrides))
    return e.value.problems


def test_unknown_key_names_the_closest_valid_one():
    (msg,) = problems("train.epoch=2")
    assert msg == "unknown key 'train.epoch' (did you mean 'train.epochs'?)"


@pytest.mark.parametrize("typed,meant", [
    ("train.learning_rate", "train.lr"), ("train.per_device_train_batch_size", "train.batch_size"),
    ("train.num_train_epochs", "train.epochs"), ("train.gradient_accumulation_steps", "train.grad_accum_steps"),
    ("train.resume_from_checkpoint", "train.resume_from"), ("train.warmup_steps", "train.warmup_ratio"),
    ("train.save_total_limit", "train.keep_checkpoints"), ("data.max_seq_length", "data.max_length"),
    ("output.output_dir", "output.dir"), ("train.metric_for_best_model", "train.metric_for_best")])
def test_trainer_argument_names_point_at_the_textft_key(typed, meant):
    (msg,) = problems(f"{typed}=1")
    assert msg == f"unknown key '{typed}' (did you mean '{meant}'?)"


def test_keys_without_a_section_point_at_the_full_key(tmp_path):
    (msg,) = problems("learning_rate=1e-4")
    assert msg.startswith("override 'learning_rate=1e-4' must name a section") and msg.endswith("(did you mean 'train.lr'?)")
    (msg,) = problems("epochs=3")
    assert msg.endswith("(did you mean 'train.epochs'?)")
    # the same slip in a YAML file: a Trainer name at the top level is not a section
    (tmp_path / "c.yaml").write_text("data: {dataset: imdb}\nlearning_rate: 1.0e-4\nnum_train_epochs: 3\n")
    assert problems(path=tmp_path / "c.yaml") == ["unknown section 'learning_rate' (did you mean 'train.lr'?)",
                                                  "unknown section 'num_train_epochs' (did you mean 'train.epochs'?)"]
    # and the sweep space reads the same mapping
    from textft.sweep_space import parse_sweep

    with pytest.raises(UserError) as e:
        parse_sweep({"space": {"train.num_train_epochs": {"type": "int", "low": 1, "high": 3}}}, "s.yaml")
    assert "(did you mean 'train.epochs'?)" in e.value.problems[0]


def test_precision_is_one_vocabulary_and_the_old_no_still_loads(tmp_path, caplog):
    from textft.config import INFERENCE_PRECISIONS, PRECISIONS

    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16") and INFERENCE_PRECISIONS == (*PRECISIONS, "int8")
    assert load_config("tiny", ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    # saved configs of earlier runs say `no` (YAML reads it as false): read as fp32, with a note
    (tmp_path / "old.yaml").write_text("data: {dataset: imdb}\ntrain: {mixed_precision: no}\n")
    assert load_config(tmp_path / "old.yaml").train.mixed_precision == "fp32"
    assert "'train.mixed_precision': 'no' is the old name of 'fp32' (did you mean 'fp32'?)" in caplog.text
    assert load_config("tiny", ["train.mixed_precision=no"]).train.mixed_precision == "fp32"
    (msg,) = problems("train.mixed_precision=fp33")
    assert msg == "'train.mixed_precision' must be 'auto' | 'fp32' | 'bf16' | 'fp16', got 'fp33' (did you mean 'fp32'?)"


def test_truncation_is_one_vocabulary():
    from textft.config import LONG_TEXT, TRUNCATIONS

    assert TRUNCATIONS == ("head", "tail", "head+tail") and LONG_TEXT == (*TRUNCATIONS, "sliding_window")
    (msg,) = problems("data.truncation=sliding_window")
    assert msg.startswith("'data.truncation' must be 'head' | 'tail' | 'head+tail', got 'sliding_window'")


def test_unknown_section_is_reported_with_suggestion():
    (msg,) = problems("trian.lr=1e-4")
    assert "unknown section 'trian'" in msg and "did you mean 'train'" in msg


def test_wrong_types_are_rejected_with_the_expected_type():
    (msg,) = problems("train.batch_size=sixteen")
    assert "'train.batch_size' must be an integer" in msg and "sixteen" in msg
    (msg,) = problems("train.lr=fast")
    assert "'train.lr' must be a number" in msg
    # keys that textft can choose itself also say so, and catch a misspelt auto
    (msg,) = problems("train.epochs=atuo")
    assert msg == "'train.epochs' must be a number or 'auto', got 'atuo' (did you mean 'auto'?)"


def test_invalid_values_are_rejected():
    assert any("'train.lr' must be > 0" in p for p in problems("train.lr=0"))
    assert any("'train.lr' must be > 0" in p for p in problems("train.lr=-1e-5"))
    assert any("'train.epochs' must be > 0" in p for p in problems("train.epochs=0"))


def test_unknown_transfer_mode_suggests_the_closest():
    (msg,) = problems("model.transfer=feature_extract")
    assert "'model.transfer'" in msg and "did you mean 'feature_extraction'" in msg


def test_every_problem_is_reported_at_once():
    found = problems("train.lr=0", "train.epochs=-1", "model.transfer=topk", "data.colour=red")
    assert len(found) == 4
    joined = "\n".join(found)
    for key in ("train.lr", "train.epochs", "model.transfer", "data.colour"):
        assert key in joined


def test_malformed_override_and_missing_file():
    assert "must look like section.key=value" in problems("train.lr")[0]
    with pytest.raises(UserError, match="does not exist"):
        load_config("nope")


def test_no_data_source_is_an_error():
    with pytest.raises(UserError, match="no training data"):
        load_config(None, [])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("quickstart", ["train.seed=7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["seed"] == 7


@pytest.mark.parametrize("path", [p.path for p in presets("accelerate").values()], ids=lambda p: p.name)
def test_accelerate_configs_are_valid_for_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    raw = yaml.safe_load(path.read_text())
    assert raw["num_processes"] >= 1 and raw["distributed_type"]
    cfg = ClusterConfig.from_yaml_file(path)  # accelerate's own loader rejects unknown or misspelt keys
    assert cfg.num_machines == raw["num_machines"] and cfg.num_processes == raw["num_processes"]


@pytest.mark.parametrize("path", [p.path for p in presets("sweep").values()], ids=lambda p: p.name)
def test_shipped_sweep_spaces_parse(path):
    from textft.sweep_space import parse_sweep, read_yaml

    spec = parse_sweep(read_yaml(path, "--sweep")["sweep"], str(path))
    assert spec.space and spec.metric == "macro_f1"


def test_environment_values_are_used_but_saved_as_references(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTFT_TEST_REPO", "me/secret-repo")
    monkeypatch.delenv("TEXTFT_TEST_UNSET", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: imdb\noutput:\n  hub_repo_id: ${oc.env:TEXTFT_TEST_REPO}\n"
                      "  dir: ${oc.env:TEXTFT_TEST_UNSET,runs/x}\n")
    cfg = load_config(config, ["model.name_or_path=${oc.env:TEXTFT_TEST_REPO}"])
    assert cfg.output.hub_repo_id == cfg.model.name_or_path == "me/secret-repo" and cfg.output.dir == "runs/x"
    save_config(cfg, tmp_path / "saved.yaml")
    saved = (tmp_path / "saved.yaml").read_text()
    assert "secret-repo" not in saved and saved.count("${oc.env:TEXTFT_TEST_REPO}") == 2
    assert "${oc.env:TEXTFT_TEST_UNSET,runs/x}" in saved
    assert load_config(tmp_path / "saved.yaml") == cfg  # the saved file reruns the same settings
    # a plain override replaces the file's reference, and is saved as given
    assert load_config(config, ["output.hub_repo_id=me/plain"]).to_dict()["output"]["hub_repo_id"] == "me/plain"
    monkeypatch.delenv("TEXTFT_TEST_REPO")
    with pytest.raises(UserError, match="TEXTFT_TEST_REPO"):
        load_config(config)


@pytest.mark.slow
def test_an_environment_secret_is_never_written(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTFT_TEST_SECRET", "s3cr3t-value-1234")
    config = tmp_path / "secret.yaml"
    config.write_text("output:\n  hub_repo_id: me/${oc.env:TEXTFT_TEST_SECRET}\n")
    assert cli(["train", "--config", str(config), *tiny_args, "train.max_steps=2"]) == 0
    out = tmp_path / "run"
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".json", ".md", ".html", ".jsonl"):
            assert "s3cr3t-value-1234" not in f.read_text(errors="replace"), f.name
    assert "${oc.env:TEXTFT_TEST_SECRET}" in (out / "textft_config.yaml").read_text()
