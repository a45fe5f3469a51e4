"""What textft accepts as a text to classify, checked where texts come in (HTTP requests, data files).

A text is *invalid* when a tokenizer cannot read it or would read nothing:

* it is not a string (a number, a list, an object);
* it holds a lone surrogate (U+D800..U+DFFF without its pair). JSON's ``\\ud800`` escape and Python
  strings can carry one, but it is not Unicode text: it has no UTF-8 encoding, and the Rust
  tokenizers refuse the whole batch it is in;
* it holds nothing but whitespace, control (Cc) and format (Cf) characters: BERT-style normalizers
  drop all of these, so the model would classify an empty sequence.

NUL and other control characters *inside* a text with real content are accepted: normalizers drop
them (WordPiece) or encode them as bytes (byte-level BPE), and refusing them would reject text
copied from PDFs and terminals for no gain.

The classifier's inputs (``split_inputs``, ``check_texts``, ``check_pairs``) are checked here too: a
list of texts, or of pairs ``{"text", "text_pair"}``.
"""

from __future__ import annotations

import unicodedata

from textft.errors import UserError

_INVISIBLE = {"Cc", "Cf", "Zs", "Zl", "Zp"}


def text_problem(text) -> str | None:
    """Why ``text`` cannot be classified (a phrase to follow its location), or None when it can."""
    if not isinstance(text, str):
        return f"expected a text (string), got {type(text).__name__}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"character {e.start} is a lone surrogate (U+{ord(text[e.start]):04X}), which is not valid"
                " Unicode text; send UTF-8 text")
    # all() stops at the first visible character, so ordinary texts cost one step.
    if all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text):
        return "the text is empty" if not text.strip() else \
            "the text holds only control or format characters, which tokenizers drop"
    return None


# --- inputs of a classifier: texts and pairs ------------------------------------------------------


def check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def unreadable_inputs(texts: list[str], pairs: list[str | None] | None) -> list[str]:
    """``texts[i]: why`` for every input a tokenizer cannot read (textft.texts), as serve reports them;
    TypeError for an input that is not a string at all."""
    wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:  # a programming error rather than bad data: Python's own exception for it
        raise TypeError(f"texts must be strings; item {wrong[0]} is {type(texts[wrong[0]]).__name__}")
    problems = []
    for i, text in enumerate(texts):
        for where, value in ((f"texts[{i}]", text), (f"texts[{i}].text_pair", pairs[i] if pairs else None)):
            if value is not None and (problem := text_problem(value)):
                problems.append(f"{where}: {problem}")
    return problems


def split_inputs(inputs) -> tuple[list[str], list[str | None] | None]:
    """Texts and, when any input is a pair ``{"text", "text_pair"}``, the second texts (None for singles)."""
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__iter__"):
        raise TypeError(f"texts must be a list of strings or pairs, got {type(inputs).__name__}")
    texts, pairs = [], []
    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            unknown = set(item) - {"text", "text_pair"}
            if unknown or not isinstance(item.get("text"), str) or not isinstance(item.get("text_pair"), str):
                raise TypeError(f"item {i} must be {{'text': str, 'text_pair': str}}, got keys {sorted(item)}")
            texts.append(item["text"])
            pairs.append(item["text_pair"])
        else:
            texts.append(item)
            pairs.append(None)
    return texts, (pairs if any(p is not None for p in pairs) else None)


def check_pairs(texts: list[str], pairs, model_pairs: bool | None) -> list[str | None]:
    pairs = list(pairs)
    if len(pairs) != len(texts):
        raise UserError(f"{len(texts)} texts but {len(pairs)} second texts: every pair needs both")
    bad = [i for i, p in enumerate(pairs) if p is not None and not isinstance(p, str)]
    if bad:
        raise TypeError(f"second texts must be strings; item {bad[0]} is {type(pairs[bad[0]]).__name__}")
    if model_pairs is False and any(p is not None for p in pairs):
        raise UserError("this model was trained on single texts, not pairs: give each input as one text")
    if model_pairs and any(p is None for p in pairs):
        raise UserError("this model was trained on text pairs: give each input as {\"text\": ..., \"text_pair\": ...}")
    return pairs
