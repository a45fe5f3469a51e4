"""How the ``auto`` training settings are derived from the backbone and the data, and that every
explicit setting wins over them."""

import json
import math

import pytest
import yaml

from textft.config import ModelConfig, load_config
from textft.modeling import build_model
from textft.recipe import Facts, Plan, head_is_fresh, non_embedding_params, resolve
from textft.train import main

MINILM = 10_800_000  # non-embedding parameters of all-MiniLM-L6-v2 (6 layers x 384 wide)
BERT_BASE = 85_000_000  # 12 layers x 768 wide
BERT_LARGE = 302_000_000  # 24 layers x 1024 wide


def facts(**kw) -> Facts:
    base = dict(non_embedding_params=MINILM, fresh_head=True, pretrained_encoder=True, n_train=9003,
                n_validation=1000, num_labels=77, global_batch=32)
    base |= kw
    # as the sharded loader counts them: ceil(ceil(n / batch) / processes) / accumulation, rounded up
    base.setdefault("steps_per_epoch", math.ceil(base["n_train"] / base["global_batch"]))
    return Facts(**base)


def auto(*overrides, **kw):
    cfg, why, plan = resolve(load_config(None, ["data.dataset=x", *overrides]), facts(**kw))
    assert plan == Plan.from_config(cfg.train, plan.steps_per_epoch)  # the plan the loop gets
    return cfg, why


def test_lr_scales_down_with_backbone_size():
    lrs = {n: auto(non_embedding_params=n)[0].train.lr for n in (MINILM, BERT_BASE, BERT_LARGE)}
    # The two anchors: measured on MiniLM, the bert-base authors' grid.
    assert lrs[MINILM] == pytest.approx(2e-4)
    assert lrs[BERT_BASE] == pytest.approx(3e-5)
    # Beyond them the same power law, clipped: bert-large would get 9.4e-6.
    cfg, why = auto(non_embedding_params=BERT_LARGE)
    assert cfg.train.lr == pytest.approx(1e-5) and "clipped" in why["train.lr"]
    # Between: distilbert-sized (6 layers x 768) lands between the anchors.
    assert 3e-5 < auto(non_embedding_params=42_500_000)[0].train.lr < 2e-4
    # A 2-layer 32-wide test model would get 5e-2 by the formula: clipped to the range.
    cfg, why = auto(non_embedding_params=25_000)
    assert cfg.train.lr == pytest.approx(1e-3) and "clipped" in why["train.lr"]


def test_head_lr_is_ten_times_lr_only_for_a_fresh_head_on_a_pretrained_encoder():
    assert auto()[0].train.head_lr == pytest.approx(2e-3)
    cfg, why = auto(fresh_head=False)
    assert cfg.train.head_lr == cfg.train.lr and "loaded with trained weights" in why["train.head_lr"]
    cfg, why = auto(pretrained_encoder=False)
    assert cfg.train.head_lr == cfg.train.lr and "random weights" in why["train.head_lr"]
    # It follows an explicit lr.
    assert auto("train.lr=2e-5")[0].train.head_lr == pytest.approx(2e-4)


def test_training_length_from_data_size_and_classes():
    # Banking77-sized: 8 steps per class = 616 steps at 282 steps per epoch.
    cfg, why = auto()
    assert cfg.train.epochs == pytest.approx(616 / 282, abs=1e-3)
    assert "616 optimizer steps" in why["train.epochs"]
    # Two classes: the 150-step minimum; 2,000 reviews at batch 16 = 125 steps per epoch.
    cfg, _ = auto(global_batch=16, n_train=2000, num_labels=2)
    assert cfg.train.epochs == pytest.approx(1.2)
    # Large data: one pass, however few steps the minimum asks for.
    cfg, why = auto(n_train=500_000, num_labels=2)
    assert cfg.train.epochs == 1.0 and "at least one pass" in why["train.epochs"]
    # Tiny data: capped.
    cfg, why = auto(n_train=40, num_labels=2)
    assert cfg.train.epochs == 20.0 and "capped" in why["train.epochs"]
    # Multi-label: every label is a binary decision with few positives, so at least three passes,
    # however large the data (GoEmotions-sized: 1,357 steps a pass against a 224-step minimum).
    cfg, why = auto(n_train=43_410, num_labels=28, task="multi_label", default_metric="macro_f1")
    assert cfg.train.epochs == 3.0 and "at least 3 passes" in why["train.epochs"]
    assert auto(n_train=40, num_labels=2, task="multi_label")[0].train.epochs == 20.0  # tiny: capped as before
    # Text pairs: at least three passes (MRPC-sized), where single texts of the same size take 1.3.
    cfg, why = auto(n_train=3667, num_labels=2, pairs=True)
    assert cfg.train.epochs == 3.0 and "3 passes: the examples are text pairs" in why["train.epochs"]
    assert auto(n_train=3667, num_labels=2)[0].train.epochs == pytest.approx(150 / 115, abs=1e-3)
    # The steps come from the global batch: two processes halve the steps per epoch.
    assert auto(global_batch=64)[0].train.epochs == pytest.approx(616 / 141, abs=1e-3)


def test_evaluation_cadence_and_early_stopping_follow_an_auto_length():
    cfg, why = auto()
    t = cfg.train
    # 616 steps x 32 examples against 1,000 validation examples: a budget of 8 evaluations. Every 77
    # steps plus the epoch ends would make 10; every 94 makes 7 (94 x 3 is the first epoch end).
    assert t.eval_every_steps == 94
    assert t.early_stopping_patience == 3 and t.early_stopping_min_steps == 308
    assert why["train.eval_every_steps"].startswith("7 evaluation(s) of 1,000 validation examples, about 12%")
    # Few examples seen per validation pass: epoch ends only, no early stopping.
    cfg, why = auto(global_batch=16, n_train=2000, num_labels=2)
    assert cfg.train.eval_every_steps == 0 and "epoch ends and the last step only" in why["train.eval_every_steps"]
    assert cfg.train.early_stopping_patience == 0 and cfg.train.early_stopping_min_steps == 0


def test_an_explicit_length_turns_off_the_length_dependent_choices():
    cfg, why = auto("train.epochs=3")
    t = cfg.train
    assert (t.epochs, t.eval_every_steps, t.early_stopping_patience, t.early_stopping_min_steps) == (3.0, 0, 0, 0)
    assert "set explicitly" in why["train.eval_every_steps"] and "train.epochs" not in why
    cfg, why = auto("train.max_steps=100")
    assert cfg.train.epochs == pytest.approx(100 / 282, abs=1e-3) and "max_steps" in why["train.epochs"]
    assert cfg.train.early_stopping_patience == 0


def test_every_override_wins_and_is_not_explained():
    explicit = ["train.lr=3e-5", "train.head_lr=7e-4", "train.epochs=2.5", "train.eval_every_steps=40",
                "train.early_stopping_patience=5", "train.early_stopping_min_steps=11", "train.metric_for_best=macro_f1",
                "model.transfer=full"]
    cfg, why = auto(*explicit)
    t = cfg.train
    assert (t.lr, t.head_lr, t.epochs, t.eval_every_steps, t.early_stopping_patience,
            t.early_stopping_min_steps) == (3e-5, 7e-4, 2.5, 40, 5, 11)
    assert why == {}
    # Each one alone wins too, while the others stay automatic.
    for item in explicit:
        key, value = item.split("=")
        cfg, why = auto(item)
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert (got == value) if key in ("train.metric_for_best", "model.transfer") else float(got) == float(value)
        assert key not in why and len(why) == len(explicit) - 1


def test_nothing_is_left_auto():
    cfg, why = auto()
    for key in why:
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) != "auto"
    assert set(why) == {"model.transfer", "train.lr", "train.head_lr", "train.epochs", "train.eval_every_steps",
                        "train.early_stopping_patience", "train.early_stopping_min_steps", "train.metric_for_best"}


def test_fresh_head_detection(tiny_model_dir):
    # The tiny checkpoint is a 2-label classifier: with 2 labels its head loads, with 3 it is new.
    model, new = build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["neg", "pos"])
    assert not head_is_fresh(model, new)
    model, new = build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["a", "b", "c"])
    assert head_is_fresh(model, new) and {"classifier.weight", "classifier.bias"} <= new
    # Embeddings and head excluded: 2 layers of (4 x 32 x 32 attention + 2 x 32 x 64 MLP + biases/norms).
    assert non_embedding_params(model) == sum(p.numel() for n, p in model.named_parameters()
                                              if ".encoder.layer." in n)
    model, new = build_model(ModelConfig(name_or_path=str(tiny_model_dir), random_init=True), ["a", "b"])
    assert head_is_fresh(model, new)


@pytest.mark.slow
def test_a_run_records_its_auto_settings(tiny_args, tmp_path):
    out = tmp_path / "auto"
    args = [a for a in tiny_args if not a.startswith(("train.epochs", "train.lr", "output.dir"))]
    assert main([*args, f"output.dir={out}"]) == 0
    saved = (out / "textft_config.yaml").read_text()
    # Comments in the saved config say why; the file still loads, with numbers instead of auto.
    assert "lr: 0.001  # auto: 17,088 non-embedding parameters, on the line through MiniLM" in saved
    assert "  # auto: at least max(150, 8 x 2 classes) = 150 optimizer steps" in saved
    cfg = load_config(out / "textft_config.yaml")
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.head_lr == pytest.approx(1e-3)  # head loaded
    # 150 steps at 25 per epoch: 6 epoch-end evaluations; a finer cadence would exceed 10 in all.
    assert cfg.train.epochs == pytest.approx(150 / 25) and cfg.train.eval_every_steps == 0
    assert cfg.train.early_stopping_patience == 3 and cfg.train.early_stopping_min_steps == 75
    evaluation = json.loads((out / "eval_report.json").read_text())
    assert evaluation["optimizer_steps"] >= 75  # never stopped before the minimum
    report = json.loads((out / "report.json").read_text())
    rows = {r["key"]: r for r in report["recipe"]}
    assert rows["train.epochs"]["value"] == pytest.approx(6.0) and "150 optimizer steps" in rows["train.epochs"]["why"]
    md = (out / "report.md").read_text()
    assert "## Settings chosen automatically" in md and "| train.eval_every_steps | 0 |" in md
    assert "id='recipe'" in (out / "report.html").read_text()
    assert yaml.safe_load(saved)["train"]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["banking77-minilm", "imdb-minilm", "sst2-minilm"])
def test_shipped_task_recipes_leave_the_adaptive_settings_auto(name):
    t = load_config(name).train
    assert (t.lr, t.head_lr, t.epochs, t.eval_every_steps, t.early_stopping_patience) == ("auto",) * 5
