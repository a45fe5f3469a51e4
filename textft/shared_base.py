"""Many LoRA adapters served from one copy of their base model.

A ``SharedBase`` holds one base model wrapped by peft, with every adapter attached to it under its
own name: its LoRA matrices, and its own copy of the modules it trained in full (the head, with that
adapter's number of outputs, and the pooler). The adapters stay unmerged: an adapter costs its own
tensors (MiniLM, rank 8 on all-linear: 2 MB) instead of a whole model.

``run(name, batch)`` gives adapter ``name``'s logits. Forward passes run one at a time under the
base's lock, and the batches of callers that arrive while a pass runs (each adapter's micro-batcher
calls from its own thread) wait and then run together in ONE pass, each row through its own adapter:
peft's mixed batches (each row's adapter name handed to every LoRA layer and module trained in full),
every LoRA layer updating all rows in two batched matmuls over the batch's adapters' matrices,
stacked (``_lora_rows``), and each adapter's own head and pooler on its own rows (the heads' outputs
padded to the widest; each caller gets its own columns). Only batches padded alike share a pass (same
tokenizer, right padding, same autocast), and a batch that runs alone takes the same way; if a pass
fails, its batches run one adapter at a time, peft's own way, so that only a failing batch fails.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections import defaultdict
from dataclasses import dataclass
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
        self.widths: dict[str, int] = {}
        """Each adapter's number of outputs (its head's width)."""
        self.padding: dict[str, tuple] = {}
        """Each adapter's tokenizer as a mixed pass pads with it: (tokenizer object id, pad id, side)."""
        self.pending: list[_Call] = []
        self.pending_lock = threading.Lock()
        self.passes = self.mixed_passes = 0
        """Forward passes run, and those of them that mixed several callers' batches."""
        self.mixing: list | None = None
        """The modules a mixed pass names each row's adapter to (``_mixing_modules``; None: to find again)."""

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
                _mix_full_modules(self.model)
                self.mixing = None
                self.names.add(name)
                self.widths[name] = self._load_width(classifier)
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
            self.widths.pop(name, None)
            self.padding.pop(name, None)
            self.mixing = None
            if self.names:
                with warnings.catch_warnings():  # peft's active adapter is unused here: its successor is noise
                    warnings.filterwarnings("ignore", "Adapter .* was active which is now deleted")
                    self.model.delete_adapter(name)
            else:
                self.model = None
            self.active = None

    @staticmethod
    def _load_width(classifier: dict) -> int:
        from transformers import AutoConfig

        return AutoConfig.for_model(**classifier).num_labels

    def use_tokenizer(self, name: str, tokenizer) -> None:
        """Record the tokenizer adapter ``name``'s batches are padded with (what a mixed pass pads with)."""
        self.padding[internal_name(name)] = (id(tokenizer), tokenizer.pad_token_id, tokenizer.padding_side)

    def run(self, name: str, batch: dict):
        """The logits of adapter ``name`` on a collated batch (tensors on any device); batches of callers
        that wait meanwhile share a forward pass (see the module)."""
        call = _Call(internal_name(name), batch, _autocast_state())
        with self.pending_lock:
            self.pending.append(call)
        with self.lock:
            if not call.done:  # else a pass that ran while this caller waited for the lock answered it
                with self.pending_lock:
                    calls, self.pending = self.pending, []
                self._run_calls(calls)
        if call.error is not None:
            raise call.error
        return call.result

    def run_mixed(self, batches: list[tuple[str, dict]]) -> list:
        """The logits of each (adapter name, collated batch) from one forward pass, each row through its
        own adapter (the batches must pad alike: one tokenizer, right padding)."""
        calls = [_Call(internal_name(name), batch, _autocast_state()) for name, batch in batches]
        with self.lock:
            return self._forward_mixed(calls)

    def _run_calls(self, calls: list["_Call"]) -> None:
        """Answer every call: those that pad alike in one mixed pass, the others each in a pass of its
        own the same way (which never switches peft's active adapter: a walk of every module); one
        adapter at a time, peft's own way, for the batches of a mixed pass that fails. Every call ends
        answered or failed, never left waiting."""
        groups: dict[tuple, list[_Call]] = defaultdict(list)
        for call in calls:
            groups[(self.padding.get(call.name), call.autocast)].append(call)
        try:
            for (padding, _), group in groups.items():
                joins = padding is not None and padding[2] == "right"
                for part in [group] if joins else [[call] for call in group]:
                    try:
                        for call, logits in zip(part, self._forward_mixed(part)):
                            call.result = logits
                        continue
                    except Exception:
                        log.warning("a forward pass of %d batches through their adapters failed; running them"
                                    " one adapter at a time", len(part), exc_info=True)
                    for call in part:
                        try:
                            call.result = self._forward_one(call)
                        except Exception as e:
                            call.error = e
        finally:
            for call in calls:
                if call.result is None and call.error is None:
                    call.error = RuntimeError("the shared base's forward pass did not answer this batch")
                call.done = True

    def _forward_one(self, call: "_Call"):
        import torch

        if self.active != call.name:
            self.model.set_adapter(call.name, inference_mode=True)
            self.active = call.name
        inputs = {k: v.to(self.device) for k, v in call.batch.items()}
        with torch.inference_mode(), _autocast(call.autocast):
            self.passes += 1
            return self.model(**inputs).logits

    def _forward_mixed(self, calls: list["_Call"]) -> list:
        import torch
        from torch.nn import functional

        keys = set(calls[0].batch)
        if any(set(c.batch) != keys or any(v.dim() != 2 for v in c.batch.values()) for c in calls):
            raise ValueError("the batches do not have the same inputs")
        pad_id = (self.padding.get(calls[0].name) or (None, 0))[1] or 0
        length = max(c.batch["input_ids"].shape[1] for c in calls)
        joined = {key: torch.cat([functional.pad(c.batch[key], (0, length - c.batch[key].shape[1]),
                                                 value=pad_id if key == "input_ids" else 0) for c in calls])
                  .to(self.device) for key in keys}
        rows = [len(c.batch["input_ids"]) for c in calls]
        names = _RowAdapters(c.name for c, n in zip(calls, rows) for _ in range(n))
        names.index_on(self.device)
        if self.mixing is None:
            self.mixing = _mixing_modules(self.model)
        hooks = [m.register_forward_pre_hook(functools.partial(_rows_hook, names), with_kwargs=True)
                 for m in self.mixing]
        try:
            with torch.inference_mode(), _autocast(calls[0].autocast):
                logits = self.model(**joined).logits
        finally:
            for hook in hooks:
                hook.remove()
        self.passes += 1
        self.mixed_passes += len({c.name for c in calls}) > 1
        starts = [sum(rows[:i]) for i in range(len(rows))]
        return [logits[start:start + n, :self.widths[c.name]] for c, start, n in zip(calls, starts, rows)]

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
        """The underlying transformers model (its config and embeddings; not its head). Under the lock, and
        not through peft's active adapter: an adapter leaving in another thread is deleted before peft
        picks another active one."""
        with self.lock:
            return self.model.base_model.model


@dataclass
class _Call:
    """One caller's batch for adapter ``name`` (its internal name), and its answer once a pass ran."""

    name: str
    batch: dict
    autocast: tuple
    result: object = None
    error: BaseException | None = None
    done: bool = False


def _autocast_state() -> tuple:
    """The calling thread's CPU autocast (the classifier's precision): a pass for several callers runs
    in another's thread, under the autocast each of them asked for."""
    import torch

    return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")


def _autocast(state: tuple):
    import torch

    enabled, dtype = state
    return torch.autocast("cpu", dtype=dtype, enabled=enabled)


def _rows_by_adapter(wrapper, *args, adapter_names: list[str], **kwargs):
    """A fully trained module (head, pooler) in a mixed batch: each adapter's own copy on its own rows.
    Heads differ in width: the outputs are padded to the widest (zeros), each row's own columns first."""
    x, rest = args[0], args[1:]
    parts = []
    for name in dict.fromkeys(adapter_names):
        rows = [i for i, n in enumerate(adapter_names) if n == name]
        parts.append((rows, wrapper.modules_to_save[name](x[rows], *rest, **kwargs)))
    first = parts[0][1]
    out = first.new_zeros((len(x), *first.shape[1:-1], max(o.shape[-1] for _, o in parts)))
    for rows, o in parts:
        out[rows, ..., :o.shape[-1]] = o
    return out


def _mix_full_modules(model) -> None:
    """Let the fully trained modules take mixed batches whatever their widths (peft's own mixed forward
    for them stacks equal shapes, and takes only linear-like modules: not a pooler)."""
    from peft.utils.other import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module._mixed_batch_forward = functools.partial(_rows_by_adapter, module)


class _RowAdapters(list):
    """Each row's adapter name, as peft's mixed batches take them (a list), with what every LoRA layer of
    a pass would otherwise work out again: the distinct adapters in order, and each row's place among
    them (``slots``, a tensor on the model's device)."""

    order: list[str]
    slots: object = None

    def index_on(self, device) -> None:
        import torch

        self.order = list(dict.fromkeys(self))
        slot = {n: i for i, n in enumerate(self.order)}
        self.slots = torch.tensor([slot[n] for n in self], device=device)


def _lora_rows(layer, original, variant_keys, x, *args, adapter_names: list[str], **kwargs):
    """A LoRA linear layer in a mixed batch: every row's update through its own adapter in two batched
    matmuls over the matrices of the adapters in the batch, stacked (a lower rank padded with zeros,
    which add nothing), however many adapters the batch mixes; with one adapter, its two matmuls.
    peft's own runs each adapter's rows apart: a gather, two small matmuls and a scatter per adapter and
    layer, which on a CPU cost more than the layer. An adapter this layer lacks or cannot stack (a bias,
    a variant such as DoRA), or a layer in training, takes peft's own way."""
    import torch
    from torch.nn import functional

    variant = {k: kwargs.pop(k) for k in variant_keys if k in kwargs}  # peft's, never the base layer's
    if not isinstance(adapter_names, _RowAdapters) or adapter_names.slots is None:  # peft's own entry: a list
        adapter_names = _RowAdapters(adapter_names)
        adapter_names.index_on(x.device)
    order = adapter_names.order
    if (layer.training or len(adapter_names) != len(x) or x.dim() < 2 or any(v is not None for v in variant.values())
            or any(n not in layer.lora_A or n in getattr(layer, "lora_variant", {})
                   or layer.lora_B[n].bias is not None for n in order)):
        return original(x, *args, adapter_names=adapter_names, **variant, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    a = [layer.lora_A[n].weight for n in order]  # rank x inputs
    b = [layer.lora_B[n].weight for n in order]  # outputs x rank
    scales = [float(layer.scaling[n]) for n in order]
    if not torch.is_autocast_enabled(x.device.type):  # else autocast casts both, once: no copy of x first
        x = x.to(a[0].dtype)
    if len(order) == 1:
        update = functional.linear(functional.linear(x, a[0]), b[0]) * scales[0]
    else:
        rank = max(w.shape[0] for w in a)
        a = torch.stack([functional.pad(w, (0, 0, 0, rank - w.shape[0])) if w.shape[0] < rank else w for w in a])
        b = torch.stack([functional.pad(w, (0, rank - w.shape[1])) if w.shape[1] < rank else w for w in b])
        index = adapter_names.slots
        low = torch.bmm(x.reshape(len(x), -1, x.shape[-1]), a[index].transpose(1, 2))
        if len(set(scales)) == 1:
            low = low * scales[0]
        else:
            low = low * torch.tensor(scales, dtype=low.dtype, device=x.device)[index].view(-1, 1, 1)
        update = torch.bmm(low, b[index].transpose(1, 2))
    result += update.reshape(result.shape).to(result.dtype)
    return result


def _mixing_modules(model) -> list:
    """The modules a mixed pass tells each row's adapter: every LoRA layer, each given the batched mixed
    forward (``_lora_rows``), and every module trained in full. Walked once per change of adapters:
    peft's ``adapter_names`` walks every module of the model on every pass, which with 50 adapters
    attached (thousands of modules) cost more than the pass."""
    from peft.tuners.lora import Linear, LoraLayer, layer
    from peft.utils import other

    wrappers = getattr(other, "AuxiliaryTrainingWrapper", other.ModulesToSaveWrapper)
    variant_keys = tuple(getattr(layer, "VARIANT_KWARG_KEYS", ()))
    found = []
    for module in model.modules():
        if isinstance(module, Linear) and not getattr(module, "_textft_rows", False):
            module._textft_rows = True
            module._mixed_batch_forward = functools.partial(_lora_rows, module, module._mixed_batch_forward,
                                                            variant_keys)
        if isinstance(module, (LoraLayer, wrappers)):
            found.append(module)
    return found


def _rows_hook(adapter_names: list[str], module, args, kwargs):
    return args, {**kwargs, "adapter_names": adapter_names}


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
    base.use_tokenizer(name, tokenizer)
    return base.base_model(), tokenizer
