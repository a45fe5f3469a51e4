"""Tokenization with head / tail / head+tail truncation (pairs: longest_first / only_second), padding
collator and batch order."""

from __future__ import annotations

import random
from collections import defaultdict

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenizer_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why ``tokenizer`` cannot read text, or None. A model directory without its tokenizer files
    still loads one: transformers builds the model type's tokenizer around its special tokens only,
    which maps every word to the unknown token, so training learns nothing and prediction is noise."""
    special = set(tokenizer.all_special_tokens)
    if not any(token not in special for token in tokenizer.get_vocab()):
        return (f"its tokenizer has no vocabulary (only the {len(tokenizer)} special tokens); the tokenizer"
                " files (tokenizer.json, or vocab.txt / vocab.json / *.model) are missing: copy them from the"
                " base model into the directory")
    return None


def kept_positions(n: int, budget: int, mode: str, head_fraction: float) -> list[int]:
    """Which of ``n`` content positions survive truncation to ``budget`` tokens."""
    if n <= budget:
        return list(range(n))
    if mode == "head":
        return list(range(budget))
    if mode == "tail":
        return list(range(n - budget, n))
    head = int(budget * head_fraction)
    return list(range(head)) + list(range(n - (budget - head), n))


def encode_texts(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 mode: str = "head", head_fraction: float = 0.25) -> dict[str, list[list[int]]]:
    """Token ids of each text with special tokens, at most ``max_length`` long.

    Special tokens are located through the tokenizer's own special-tokens mask, so the same
    code serves BERT ([CLS] x [SEP]), RoBERTa (<s> x </s>) and others without model-specific rules.
    """
    if mode == "head":
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return {k: enc[k] for k in MODEL_INPUTS if k in enc}
    enc = tokenizer(texts, truncation=False, return_special_tokens_mask=True, verbose=False)
    out: dict[str, list[list[int]]] = {k: [] for k in MODEL_INPUTS if k in enc}
    for row in range(len(texts)):
        mask = enc["special_tokens_mask"][row]
        n = len(mask)
        prefix = next((i for i, m in enumerate(mask) if not m), n)
        suffix = next((i for i, m in enumerate(reversed(mask)) if not m), 0) if prefix < n else 0
        kept = kept_positions(n - prefix - suffix, max_length - prefix - suffix, mode, head_fraction)
        positions = [*range(prefix), *(prefix + i for i in kept), *range(n - suffix, n)]
        for key in out:
            values = enc[key][row]
            out[key].append([values[p] for p in positions])
    return out


CUT_MARGIN = 16
"""Tokens beyond what truncation keeps that a cut text must still produce."""
_WHITESPACE_SEARCH = 1000


def _whitespace_at_or_after(text: str, start: int) -> int | None:
    for i in range(start, min(len(text), start + _WHITESPACE_SEARCH)):
        if text[i].isspace():
            return i
    return None


def _whitespace_at_or_before(text: str, end: int) -> int | None:
    for i in range(end, max(-1, end - _WHITESPACE_SEARCH), -1):
        if text[i].isspace():
            return i
    return None


def bounded_text(text: str, tokenizer: PreTrainedTokenizerBase, max_length: int, mode: str = "head",
                 head_fraction: float = 0.25) -> str:
    """``text`` cut down to the part that truncation to ``max_length`` tokens keeps (head, tail or both).

    Tokenizers take more than linear time in a text's length (64 texts of 20,000 characters cost
    1.4 s of CPU, 40,000 characters 5 s), although truncation then keeps a few hundred tokens. A
    cut happens only at whitespace, where WordPiece, byte-level BPE and SentencePiece pre-tokenizers
    start a new word, and only once the kept piece still yields ``CUT_MARGIN`` tokens more than
    truncation keeps: the tokens that survive truncation are exactly those of the whole text.
    Texts too short to matter, without whitespace near a cut, or in sliding-window mode (which
    reads every token) come back unchanged.
    """
    if mode not in ("head", "tail", "head+tail"):
        return text
    head = max_length if mode == "head" else int(max_length * head_fraction) if mode == "head+tail" else 0
    tail = max_length - head if mode != "head" else 0
    chars = 8 * max_length + 256  # most tokens cover fewer than 8 characters; doubled when not
    if len(text) <= 2 * chars:
        return text

    def count(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"])

    end, start = 0, len(text)  # text[:end] and text[start:] are kept
    if head:
        budget = chars
        while True:
            if 2 * budget >= len(text) or (end := _whitespace_at_or_after(text, budget)) is None:
                return text
            if count(text[:end]) >= head + CUT_MARGIN:
                break
            budget *= 2
    if tail:
        budget = chars
        while True:
            if 2 * budget >= len(text) or (start := _whitespace_at_or_before(text, len(text) - budget)) is None:
                return text
            if count(text[start:]) >= tail + CUT_MARGIN:
                break
            budget *= 2
    if end >= start:
        return text
    return text[:end] + text[start:]


def encode_pairs(texts: list[str], pairs: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int,
                 truncation: str = "longest_first") -> dict[str, list[list[int]]]:
    """Token ids of each (text, text_pair) with the model's separators and segment ids, at most
    ``max_length`` long. ``only_second`` keeps the first text whole; a pair whose first text alone
    exceeds the budget falls back to ``longest_first`` (the tokenizer refuses the whole batch otherwise)."""
    def encode(a, b, how):
        enc = tokenizer(a, b, truncation=how, max_length=max_length)
        return {k: enc[k] for k in MODEL_INPUTS if k in enc}

    try:
        return encode(texts, pairs, truncation)
    except Exception as e:  # the Rust tokenizer's truncation error has no type of its own
        if truncation != "only_second" or "runcation" not in str(e):
            raise
    out: dict[str, list[list[int]]] = {}
    for a, b in zip(texts, pairs):
        try:
            one = encode([a], [b], "only_second")
        except Exception:  # as above: the first text alone is longer than max_length
            one = encode([a], [b], "longest_first")
        for k, v in one.items():
            out.setdefault(k, []).append(v[0])
    return out


def _encode_batch(batch, tokenizer, max_length, mode, head_fraction, pair_truncation):
    if "text_pair" in batch:
        enc = encode_pairs(batch["text"], batch["text_pair"], tokenizer, max_length, pair_truncation)
    else:
        enc = encode_texts(batch["text"], tokenizer, max_length, mode, head_fraction)
    enc["length"] = [len(ids) for ids in enc["input_ids"]]
    return enc


def tokenize_splits(splits: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int,
                    mode: str = "head", head_fraction: float = 0.25, pair_truncation: str = "longest_first") -> DatasetDict:
    """Add model inputs and a ``length`` column to every split (cached by ``datasets`` for files); a
    split with a ``text_pair`` column is encoded as pairs."""
    return DatasetDict({
        name: ds.map(_encode_batch, batched=True, batch_size=1000, desc=f"tokenize ({name})",
                     fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "mode": mode,
                                "head_fraction": head_fraction, "pair_truncation": pair_truncation})
        for name, ds in splits.items()
    })


def class_grouped_order(labels: list[int], per_class: int, seed: int) -> list[int]:
    """Every index once: each class's examples shuffled and cut into groups of ``per_class``, the groups
    shuffled. Consecutive batches then hold several examples of each class they meet."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    groups = []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        groups += [members[j:j + per_class] for j in range(0, len(members), per_class)]
    rng.shuffle(groups)
    return [i for group in groups for i in group]


class EpochSampler(Sampler[int]):
    """Seeded per-epoch order; with ``group_by_length`` each batch holds texts of similar length.

    Groups come from transformers' length-grouped indices (sorted within shuffled mega-batches);
    the batches are then shuffled so that lengths do not drift within an epoch, keeping the
    longest batch first so that an out-of-memory error shows up at the first step.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool = True):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.group_by_length, self.epoch = group_by_length, 0
        self.classes: tuple[list[int], int] | None = None

    def group_classes(self, labels: list[int], per_class: int) -> None:
        """From now on, draw the order as groups of ``per_class`` examples of one class (the few-shot
        method's batches: each example meets others of its class); lengths are no longer grouped."""
        self.classes = (list(labels), per_class)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        if self.classes is not None:
            return iter(class_grouped_order(*self.classes, seed=self.seed + self.epoch))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.group_by_length:
            return iter(torch.randperm(len(self.lengths), generator=g).tolist())
        idx = get_length_grouped_indices(self.lengths, self.batch_size, generator=g)
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        rest = [batches[i] for i in (torch.randperm(len(batches) - 1, generator=g) + 1).tolist()]
        return iter([i for b in [batches[0], *rest] for i in b])


def collator(tokenizer: PreTrainedTokenizerBase, mixed_precision: bool, on_gpu: bool | None = None) -> DataCollatorWithPadding:
    # Tensor cores run fastest on sequence lengths that are multiples of 8. CPUs gain nothing from
    # it, and on short texts the extra padding costs: Banking77 queries (about 16 tokens) padded to
    # multiples of 8 were 23% padding instead of 4%, and training ran 1.4x slower.
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if mixed_precision and on_gpu else None)


def model_columns(ds: Dataset) -> Dataset:
    return ds.select_columns([c for c in (*MODEL_INPUTS, "labels") if c in ds.column_names])


def train_loader(ds: Dataset, tokenizer, batch_size: int, seed: int, group_by_length: bool,
                 mixed_precision: bool, num_workers: int = 0, padding_free: bool = False) -> DataLoader:
    sampler = EpochSampler(ds["length"], batch_size, seed, group_by_length)
    if padding_free:
        from textft.packing import flatten

        collate = flatten
    else:
        collate = collator(tokenizer, mixed_precision)
    # A private generator: each new iterator draws a worker seed from it, and drawing from the
    # global RNG instead would shift dropout masks after a resume.
    return DataLoader(model_columns(ds), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, generator=torch.Generator().manual_seed(seed))


def sort_by_length(ds: Dataset) -> Dataset:
    """Longest first: padding waste shrinks and memory peaks at the first batch."""
    return ds.sort("length", reverse=True)


def eval_loader(ds: Dataset, tokenizer, batch_size: int, mixed_precision: bool,
                num_workers: int = 0) -> DataLoader:
    """Batches in the dataset's own order: pass a length-sorted dataset for speed."""
    # Every new iterator draws a base seed from its generator; with the global RNG, each evaluation
    # would shift the dropout masks of the training that follows, so runs that evaluate at different
    # cadences would train differently.
    return DataLoader(model_columns(ds), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collator(tokenizer, mixed_precision), generator=torch.Generator().manual_seed(0))
