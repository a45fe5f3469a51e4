"""The few-shot method: what auto picks and why, the pieces (grouped batches, logistic-regression head,
contrastive loss) doing what they say, and a few-shot run end to end whose model a plain pipeline reads."""

import json
import logging
import shutil

import pytest
import torch

from conftest import toy_rows, write_jsonl
from textft.config import load_config
from textft.errors import UserError
from textft.few_shot import (head_features, head_output_layer, init_head_from_logistic_regression,
                             supervised_contrastive)
from textft.recipe import FEW_SHOT_MAX_PER_CLASS, Facts, resolve
from textft.tokenization import EpochSampler, class_grouped_order
from textft.train import main
from tiny_classifier import trained_run


def facts(**kw) -> Facts:
    base = dict(non_embedding_params=10_800_000, fresh_head=True, pretrained_encoder=True, n_train=554,
                n_validation=62, num_labels=77, global_batch=16, steps_per_epoch=35, examples_per_class=7.0)
    return Facts(**(base | kw))


def transfer(*overrides, **kw) -> tuple[str, str | None]:
    cfg, why, _ = resolve(load_config(None, ["data.dataset=x", *overrides]), facts(**kw))
    return cfg.model.transfer, why.get("model.transfer")


def test_auto_picks_few_shot_for_few_examples_per_class_and_says_why():
    chosen, why = transfer()
    assert chosen == "few_shot" and why.startswith(f"7 training examples per class (median) <= {FEW_SHOT_MAX_PER_CLASS}")
    chosen, why = transfer(examples_per_class=FEW_SHOT_MAX_PER_CLASS + 1.0)
    assert chosen == "full" and "enough for ordinary fine-tuning" in why
    assert transfer(examples_per_class=float(FEW_SHOT_MAX_PER_CLASS))[0] == "few_shot"
    chosen, why = transfer(task="multi_label", examples_per_class=None)
    assert chosen == "full" and "single_label" in why
    chosen, why = transfer(pairs=True)
    assert chosen == "full" and "text pairs" in why
    chosen, why = transfer(pretrained_encoder=False)
    assert chosen == "full" and "random weights" in why


def test_the_few_shot_recipe_trains_its_whole_plan():
    cfg, why, plan = resolve(load_config(None, ["data.dataset=x"]), facts())
    assert cfg.model.transfer == "few_shot" and plan.patience == 0 and plan.total_steps == 616  # 8 x 77 classes
    assert why["train.early_stopping_patience"].startswith("off: the few-shot recipe trains its whole plan; 62"
                                                          " validation examples")
    cfg, why, plan = resolve(load_config(None, ["data.dataset=x", "train.early_stopping_patience=2"]), facts())
    assert plan.patience == 2 and "train.early_stopping_patience" not in why  # an explicit value wins
    cfg, _, plan = resolve(load_config(None, ["data.dataset=x", "model.transfer=full"]), facts())
    assert plan.patience == 3  # the ordinary recipe keeps stopping early


def test_an_explicit_transfer_wins_and_few_shot_refuses_data_it_cannot_train():
    assert transfer("model.transfer=full") == ("full", None)
    assert transfer("model.transfer=few_shot", examples_per_class=500.0) == ("few_shot", None)
    with pytest.raises(UserError, match="'model.transfer': few_shot cannot train this data: .*multi_label"):
        transfer("model.transfer=few_shot", task="multi_label")


def test_new_keys_are_validated_and_documented():
    with pytest.raises(UserError) as e:
        load_config(None, ["data.dataset=x", "train.contrastive_weight=-1", "train.contrastive_temperature=0",
                           "model.transfer=fewshot"])
    problems = e.value.problems
    assert "'train.contrastive_weight' must be >= 0, got -1.0" in problems
    assert "'train.contrastive_temperature' must be > 0, got 0.0" in problems
    assert any("'model.transfer' must be" in p and "did you mean 'few_shot'" in p for p in problems)
    from textft.config_help import describe_keys

    text = describe_keys()
    for key in ("train.contrastive_weight (default: 1.0)", "train.contrastive_temperature (default: 0.1)",
                "model.transfer (default: 'auto')"):
        assert key in text
    assert "few_shot" in text.split("model.transfer (default: 'auto')")[1].split("model.")[0]


def test_grouped_order_puts_classes_together_and_keeps_every_example_once():
    labels = [i % 5 for i in range(40)]  # 8 per class
    order = class_grouped_order(labels, 4, seed=3)
    assert sorted(order) == list(range(40))
    groups = [order[i:i + 4] for i in range(0, 40, 4)]
    assert all(len({labels[i] for i in g}) == 1 for g in groups)
    assert order != class_grouped_order(labels, 4, seed=4)  # another epoch, another order
    sampler = EpochSampler([5] * 40, 16, seed=0)
    sampler.group_classes(labels, 4)
    sampler.set_epoch(2)
    assert list(sampler) == class_grouped_order(labels, 4, seed=2)


def test_supervised_contrastive_loss_prefers_features_grouped_by_class():
    labels = torch.tensor([0, 0, 1, 1])
    grouped = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    mixed = grouped[[0, 2, 1, 3]]
    assert supervised_contrastive(grouped, labels, 0.1) < supervised_contrastive(mixed, labels, 0.1)
    assert supervised_contrastive(grouped, torch.tensor([0, 1, 2, 3]), 0.1).item() == 0.0  # no positives


def test_the_head_starts_as_a_logistic_regression_on_the_frozen_features(tiny_model_dir):
    from accelerate import Accelerator
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=4,
                                                               ignore_mismatched_sizes=True)
    torch.manual_seed(0)
    # Class 3 has no example: it must never win before training.
    batches = [{"input_ids": torch.randint(5, 40, (6, 8)), "attention_mask": torch.ones(6, 8, dtype=torch.long),
                "labels": torch.tensor([0, 1, 2, 0, 1, 2])} for _ in range(2)]
    init_head_from_logistic_regression(model, batches, 4, 1e4, Accelerator(cpu=True))
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                            for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert logits.argmax(-1).tolist() == labels.tolist()  # 12 points in 32 dimensions: separable, and fitted so
    assert (logits[:, 3] < logits[:, :3].min(dim=-1).values).all()

    # Two classes (scikit-learn fits them as one row of log-odds): each class gets its own row.
    two = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    pairs = [{**b, "labels": b["labels"] % 2} for b in batches]
    init_head_from_logistic_regression(two, pairs, 2, 1e4, Accelerator(cpu=True))
    two.eval()
    with torch.no_grad():
        logits = torch.cat([two(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits for b in pairs])
    z, y = head_features(two, pairs, 2, Accelerator(cpu=True))
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(z.numpy(), y.numpy())
    assert torch.allclose(logits.double().softmax(-1)[:, 1], torch.from_numpy(fit.predict_proba(z.numpy())[:, 1]),
                          atol=1e-4)
    assert torch.allclose(head_output_layer(two, 2).weight[0], -head_output_layer(two, 2).weight[1])


@pytest.fixture
def few_rows(tmp_path):
    """8 training examples per class: the auto recipe's few-shot side."""
    return {"train": write_jsonl(tmp_path / "train.jsonl", toy_rows(16, 11)),
            "validation": write_jsonl(tmp_path / "validation.jsonl", toy_rows(20, 12)),
            "test": write_jsonl(tmp_path / "test.jsonl", toy_rows(60, 13))}


def test_a_few_shot_run_end_to_end_gives_a_plain_classifier(tiny_model_dir, toy_files, tmp_path_factory, few_rows,
                                                           tmp_path, caplog):
    from transformers import pipeline

    import textft

    # The backbone: the tiny classifier trained on the full toy set, an encoder whose features already
    # tell the sentiment words apart, as a pretrained encoder's tell topics apart.
    # It declares mean pooling as sentence-transformers models do, so the head reads the mean of its states.
    trained = trained_run(tiny_model_dir, toy_files, tmp_path_factory)
    backbone = tmp_path / "backbone"
    shutil.copytree(trained, backbone)
    (backbone / "1_Pooling").mkdir()
    (backbone / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    out = tmp_path / "few"
    with caplog.at_level(logging.INFO, logger="textft"):
        assert main([f"model.name_or_path={backbone}", f"data.train_file={few_rows['train']}",
                     f"data.validation_file={few_rows['validation']}", f"data.test_file={few_rows['test']}",
                     "data.max_length=32", "train.batch_size=8", "train.epochs=6", "train.lr=2e-3", "train.mixed_precision=fp32",
                     f"output.dir={out}"]) == 0
    assert "auto model.transfer = few_shot: 8 training examples per class (median) <= 16" in caplog.text
    assert ("few-shot method: the head reads the mean-pooled sentence embedding (the model's own pooling); head"
            " fitted as a logistic regression") in caplog.text
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == \
        json.loads((backbone / "config.json").read_text())["num_hidden_layers"] + 1
    saved = load_config(out / "textft_config.yaml")
    assert saved.model.transfer == "few_shot"
    report = json.loads((out / "report.json").read_text())
    assert {r["key"]: r["value"] for r in report["recipe"]}["model.transfer"] == "few_shot"
    texts = [json.loads(line)["text"] for line in few_rows["test"].read_text().splitlines()]
    ours = [a["label"] for a in textft.load(out).predict(texts)]
    theirs = [a["label"] for a in pipeline("text-classification", model=str(out))(texts)]
    assert ours == theirs
    assert json.loads((out / "eval_report.json").read_text())["splits"]["test"]["accuracy"] >= 0.8


@pytest.mark.slow
def test_a_sweep_searches_the_few_shot_settings(tiny_model_dir, few_rows, tmp_path):
    import optuna
    import yaml

    from textft.cli import main as cli

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"train_file": str(few_rows["train"]), "validation_file": str(few_rows["validation"]),
                 "max_length": 32},
        "model": {"name_or_path": str(tiny_model_dir)},
        "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "mixed_precision": "fp32"},
        "sweep": {"metric": "macro_f1", "startup_trials": 2, "space": {
            "model.transfer": {"type": "categorical", "choices": ["full", "few_shot"]},
            "train.contrastive_weight": {"type": "uniform", "low": 0.1, "high": 1.0}}}}))
    out = tmp_path / "sweep"
    assert cli(["sweep", "--config", str(config), "--trials", "2", "--output", str(out)]) == 0
    trials = optuna.load_study(study_name="textft-sweep", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        saved = load_config(out / "trials" / f"trial-{t.number}" / "textft_config.yaml")
        assert saved.model.transfer == t.params["model.transfer"]
        assert saved.train.contrastive_weight == pytest.approx(t.params["train.contrastive_weight"])
