"""Many LoRA adapters served from one copy of their base model.

A ``SharedBase`` holds one base model wrapped by peft, with every adapter attached to it under its
own name: its LoRA matrices, and its own copy of the modules it trained in full (the head, with that
adapter's number of outputs, and the pooler). A forward pass runs one adapter: ``run(name, batch)``
activates it and runs the model under the base's lock, so that concurrent callers for different
adapters never see each other's weights. The adapters stay unmerged: switching is a pointer change,
and an adapter costs its own tensors (MiniLM, rank 8 on all-linear: 2 MB) instead of a whole model.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from textft.errors import UserError, one_line
from textft.lora import ADAPTER_WEIGHTS, base_reference, check_adapter_dir, import_peft, read_record
from textft.tokenization import tokenizer_problem

log = logging.getLogger("textft")


def base_key(path: Path) -> tuple[str, str | None]:
    """What identifies the base model an adapter directory belongs on (location, revision)."""
    return base_reference(path)


class SharedBase:
    """One base model (``base``, ``revision``) with adapters attached by name; see the module."""

    def __init__(self, base: str, revision: str | None, device):
        self.base, self.revision, self.device = base, revision, device
        self.model = None
        self.lock = threading.Lock()
        self.names: set[str] = set()
        self.active: str | None = None
        self.tokenizers: dict[str, object] = {}
        """Tokenizers by the digest of their files: adapters of one base nearly always share one."""

    def _load_base(self, classifier: dict):
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the base lacks the head each adapter brings: that report is noise
        try:
            return AutoModelForSequenceClassification.from_pretrained(
                self.base, config=AutoConfig.for_model(**classifier), revision=self.revision,
                ignore_mismatched_sizes=True)
        finally:
            hf_logging.set_verbosity(verbosity)

    def add(self, name: str, path: Path) -> None:
        """Attach the adapter in ``path`` as ``name`` (its record must name a classifier config)."""
        from safetensors.torch import load_file

        peft = import_peft()
        name = internal_name(name)
        if name in self.names:  # evicted and asked for again before it left: still attached
            return
        check_adapter_dir(path)
        classifier = read_record(path).get("classifier_config")
        if not classifier:
            raise UserError(f"'{path}': an adapter without textft's record cannot share its base model")
        try:
            config = peft.PeftConfig.from_pretrained(str(path))
            config.inference_mode = True
            tensors = load_file(path / ADAPTER_WEIGHTS)
            with self.lock:
                if self.model is None:
                    model = peft.get_peft_model(self._load_base(classifier), config, adapter_name=name)
                else:
                    model = self.model
                    model.add_adapter(name, config)
                _fit_full_modules(model, name, tensors)
                result = peft.set_peft_model_state_dict(model, tensors, adapter_name=name)
                if unexpected := getattr(result, "unexpected_keys", None):
                    raise ValueError(f"tensors the model does not have: {unexpected[:3]}")
                self.model = model.to(self.device).eval()  # moves only what is not there yet: the new adapter
                self.names.add(name)
                self.active = None
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"could not attach the adapter '{path}' to its base model '{self.base}':"
                            f" {one_line(e)}") from None

    def remove(self, name: str) -> None:
        """Detach adapter ``name`` and free its tensors."""
        name = internal_name(name)
        with self.lock:
            if name not in self.names:
                return
            self.names.discard(name)
            if self.names:
                self.model.delete_adapter(name)
            else:
                self.model = None
            self.active = None

    def run(self, name: str, batch: dict):
        """The logits of adapter ``name`` on a collated batch (tensors on any device)."""
        name = internal_name(name)
        with self.lock:
            if self.active != name:
                self.model.set_adapter(name, inference_mode=True)
                self.active = name
            inputs = {k: v.to(self.device) for k, v in batch.items()}
            return self.model(**inputs).logits

    def tokenizer(self, path: Path):
        """The tokenizer saved with the adapter in ``path`` (else its base's), one object per distinct files."""
        import hashlib

        from transformers import AutoTokenizer

        where = path if (path / "tokenizer_config.json").is_file() else None
        digest = hashlib.sha256()
        for file in sorted(where.iterdir()) if where else []:
            if file.name.startswith(("tokenizer", "vocab", "special_tokens", "merges")) and file.is_file():
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
        key = digest.hexdigest() if where else "base"
        if key not in self.tokenizers:
            self.tokenizers[key] = AutoTokenizer.from_pretrained(where or self.base, revision=None if where else self.revision)
        return self.tokenizers[key]

    def base_model(self):
        """The underlying transformers model (its config and embeddings; not its head)."""
        return self.model.get_base_model()


def internal_name(name: str) -> str:
    """The adapter's name inside peft: a module name (no dots), and never part of peft's own prefixes."""
    return "adapter_" + re.sub(r"\W", "_", name)


def _fit_full_modules(model, name: str, tensors: dict) -> None:
    """Give adapter ``name``'s copies of the fully trained modules the shapes of its tensors: each
    adapter's head has its own number of outputs, and peft copies the first adapter's head."""
    from torch import nn

    from peft.utils.other import ModulesToSaveWrapper

    for prefix, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper) or name not in wrapper.modules_to_save:
            continue
        copy = wrapper.modules_to_save[name]
        for pname, param in list(copy.named_parameters()):
            saved = tensors.get(f"{prefix}.{pname}")
            if saved is not None and saved.shape != param.shape:
                owner, _, leaf = pname.rpartition(".")
                setattr(copy.get_submodule(owner) if owner else copy, leaf,
                        nn.Parameter(saved.to(param.dtype).clone(), requires_grad=False))


def attach_adapter(base: SharedBase, name: str, path: Path):
    """The adapter in ``path`` attached to ``base`` as ``name``: (the base's transformers model, for its
    config and limits, and the adapter's tokenizer)."""
    base.add(name, path)
    try:
        tokenizer = base.tokenizer(path)
    except (OSError, ValueError) as e:
        base.remove(name)
        raise UserError(f"'--model': could not load the tokenizer of '{path}': {one_line(e)}") from None
    if problem := tokenizer_problem(tokenizer):
        base.remove(name)
        raise UserError(f"'--model': '{path}' cannot classify text: {problem}")
    tokenizer.truncation_side = "right"
    return base.base_model(), tokenizer
