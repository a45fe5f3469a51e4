import pytest

from textft.config import ModelConfig, UserError
from textft.modeling import apply_transfer, build_model, layer_depths, param_groups, resolve_model_path


@pytest.fixture
def model(tiny_model_dir):
    return build_model(ModelConfig(name_or_path=str(tiny_model_dir)), ["neg", "pos"])[0]


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_model_gets_label_names(model):
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    assert model.classifier.out_features == 2


def test_full_trains_everything(model):
    counts = apply_transfer(model, ModelConfig(transfer="full"))
    assert counts["trainable"] == counts["total"]


def test_feature_extraction_trains_only_the_head(model):
    counts = apply_transfer(model, ModelConfig(transfer="feature_extraction"))
    names = trainable(model)
    assert names and all(n.startswith(("classifier.", "bert.pooler.")) for n in names)
    assert "classifier.weight" in names
    assert counts["trainable"] < 0.2 * counts["total"]


def test_top_k_unfreezes_only_the_top_layers(model):
    apply_transfer(model, ModelConfig(transfer="top_k", unfreeze_top_k=1))
    names = trainable(model)
    assert any(n.startswith("bert.encoder.layer.1.") for n in names)
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings.")) for n in names)
    assert "classifier.weight" in names


def test_layer_lr_decay_groups(model):
    groups = param_groups(model, lr=1e-3, head_lr=1e-2, weight_decay=0.01, layer_lr_decay=0.5)
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["head/decay"] == pytest.approx(1e-2)
    assert lr["layer.1/decay"] == pytest.approx(1e-3)
    assert lr["layer.0/decay"] == pytest.approx(5e-4)
    assert lr["embeddings/decay"] == pytest.approx(2.5e-4)
    grouped = sum(len(g["params"]) for g in groups)
    assert grouped == len(list(model.parameters()))


def test_no_weight_decay_on_bias_and_layernorm(model):
    groups = param_groups(model, lr=1e-3, head_lr=None, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            if n.endswith(".bias") or "LayerNorm" in n:
                assert g["weight_decay"] == 0.0, n
            else:
                assert g["weight_decay"] == 0.1, n


def test_frozen_parameters_stay_out_of_the_optimizer(model):
    apply_transfer(model, ModelConfig(transfer="feature_extraction"))
    groups = param_groups(model, lr=1e-3, head_lr=None, weight_decay=0.0)
    assert {g["name"].split("/")[0] for g in groups} == {"head"}


def test_depths_cover_embeddings_layers_head(model):
    depths = layer_depths(model)
    assert depths["bert.embeddings.word_embeddings.weight"] == 0
    assert depths["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert depths["classifier.weight"] == 3


def test_model_path_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="did you mean 'builtin:minilm'|did you mean 'minilm'"):
        resolve_model_path("builtin:minilmm")
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"  # a hub name passes through


@pytest.mark.slow
def test_frozen_word_embeddings_stay_as_loaded(tiny_args, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from textft.train import main

    assert main([*tiny_args, "model.freeze_word_embeddings=true"]) == 0
    run = tmp_path / "run"
    trained = load_file(run / "model.safetensors")
    start = load_file(next(a.split("=", 1)[1] for a in tiny_args if a.startswith("model.name_or_path")) + "/model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[key], start[key])
    moved = [k for k in start if k.startswith("bert.encoder") and not torch.equal(trained[k], start[k])]
    assert moved  # the encoder still trained
    report = json.loads((run / "eval_report.json").read_text())
    assert report["parameters"]["trainable"] == report["parameters"]["total"] - start[key].numel()
