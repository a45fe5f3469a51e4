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
"""

from __future__ import annotations

import unicodedata

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
