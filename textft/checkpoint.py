"""Resumable checkpoints in textft's own format, the best weights so far, and the final model's layout."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textft.errors import UserError
from textft.files import disk_error, link_or_copy, normal_modes, write_atomically
from textft.lora import ADAPTER_WEIGHTS, adapter_state, is_peft_model, load_adapter_state

log = logging.getLogger("textft")


def save_model(dst: Path, model, tokenizer) -> None:
    """The standard ``save_pretrained`` layout: safetensors weights, config with id2label, tokenizer."""
    model.save_pretrained(dst, safe_serialization=True)
    tokenizer.save_pretrained(dst)


# --- resumable checkpoints -------------------------------------------------------------------
#
# A checkpoint is textft's own format, read without unpickling anything (a crafted pickle runs
# code): tensors in safetensors files, everything else in JSON, and a manifest, written last, with
# the size and SHA-256 of every file and the shape of the run that wrote it.
#
#   model.safetensors       the model's weights
#   optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments, step counts)
#   optimizer.json          its parameter groups and any non-tensor state
#   scheduler.json          the learning-rate scheduler's state_dict
#   loop.json               LoopState, Accelerate's accumulation step, the fp16 loss scaler
#   rng-RANK.json           python, numpy, torch CPU and CUDA generators of each process
#   best/                   the best weights so far (``BEST``), hard links to the files of that
#                           directory when the filesystem allows: no extra space
#   textft_checkpoint.json  the manifest

MANIFEST = "textft_checkpoint.json"
BEST = "best"
"""Directory of the best weights so far, under the checkpoint root and in each checkpoint."""
FORMAT = "textft-checkpoint/1"
STEP_DIR = re.compile(r"^step-(\d+)$")
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None, "no manifest (the save did not finish)"
    try:
        data = json.loads(manifest.read_text())
        files = data["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None, "unreadable manifest"
    if data.get("format") != FORMAT:
        return None, ("written in an older format (Accelerate's pickle files), which textft no longer loads because"
                      " unpickling can run code; start the run again")
    if not isinstance(files, dict) or not all(isinstance(v, dict) and {"bytes", "sha256"} <= set(v) for v in files.values()):
        return None, "unreadable manifest"
    return data, None


def checkpoint_problem(path: Path, verify_hashes: bool = False) -> str | None:
    """Why ``path`` is not a complete, unmodified textft checkpoint, or None.

    Without ``verify_hashes`` only the manifest, the file list and the sizes are checked (cheap:
    enough to tell an interrupted or damaged save); with it every file's SHA-256 too.
    """
    data, problem = _read_manifest(path)
    if problem:
        return problem
    files = data["files"]
    present = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} - {MANIFEST}
    if unexpected := sorted(present - set(files)):
        return f"file(s) not in its manifest: {', '.join(unexpected[:5])}"
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != meta["bytes"]:
            return f"file {name} has {f.stat().st_size} bytes, expected {meta['bytes']}"
    if verify_hashes:
        for name, meta in files.items():
            if _sha256(path / name) != meta["sha256"]:
                return f"file {name} does not match its SHA-256 in the manifest (it changed after the save)"
    return None


def latest_checkpoint(root: Path) -> Path | None:
    """Newest complete ``step-N`` directory under ``root``; incomplete ones are skipped with a warning."""
    if not root.is_dir():
        return None
    steps = sorted(((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))), reverse=True)
    for _, path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def _b64(t) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(text: str):
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict:
    """This process's random generators as JSON values."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": _b64(torch.get_rng_state()),
            "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]][:torch.cuda.device_count()])


def _optimizer_parts(optimizer) -> tuple[dict, dict]:
    """The optimizer's state_dict split into tensors (for safetensors) and JSON values."""
    import torch

    sd = optimizer.state_dict()
    tensors, other = {}, {}
    for idx, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def _load_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    current = optimizer.param_groups
    groups = []
    for saved, now in zip(meta["param_groups"], current):
        # JSON turns tuples (AdamW's betas) into lists; give back the optimizer's own types.
        groups.append({k: tuple(v) if isinstance(now.get(k), tuple) and isinstance(v, list) else v
                       for k, v in saved.items()})
    shapes = {i: p.shape for i, p in enumerate(p for g in current for p in g["params"])}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        if value.dim() > 0 and int(idx) in shapes and value.shape != shapes[int(idx)]:
            raise ValueError(f"optimizer state {key} has shape {tuple(value.shape)}, the parameter"
                             f" {tuple(shapes[int(idx)])}")
        state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta["state"].items():
        state.setdefault(int(idx), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def run_shape(model, optimizer, num_processes: int) -> dict:
    """What a checkpoint must share with the run that loads it."""
    state = model.state_dict()
    signature = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()))
    config = getattr(model, "config", None)
    labels = [str(config.id2label[i]) for i in range(config.num_labels)] if config is not None else None
    return {"model_class": type(model).__name__, "parameters": sum(v.numel() for v in state.values()),
            "parameters_sha256": hashlib.sha256(signature.encode()).hexdigest(), "labels": labels,
            "optimizer_groups": [len(g["params"]) for g in optimizer.param_groups], "num_processes": num_processes}


def _shape_problems(saved: dict, now: dict) -> list[str]:
    def names(labels):
        shown = ", ".join(labels[:10]) + (" ..." if len(labels) > 10 else "")
        return f"{len(labels)} labels ({shown})"

    problems = []
    if saved.get("labels") != now["labels"]:
        problems.append(f"it was written for {names(saved.get('labels') or [])}, this run has {names(now['labels'])}")
    if (saved.get("model_class"), saved.get("parameters_sha256")) != (now["model_class"], now["parameters_sha256"]):
        problems.append(f"its model ({saved.get('model_class')}, {saved.get('parameters', 0):,} parameters) is not"
                        f" this run's ({now['model_class']}, {now['parameters']:,} parameters)")
    elif saved.get("optimizer_groups") != now["optimizer_groups"]:
        problems.append(f"its optimizer has parameter groups of {saved.get('optimizer_groups')} tensors, this run's"
                        f" {now['optimizer_groups']} (another model.transfer or layer_lr_decay)")
    if saved.get("num_processes") != now["num_processes"]:
        problems.append(f"it was written by {saved.get('num_processes')} process(es), this run has"
                        f" {now['num_processes']}")
    return problems


def check_checkpointing_supported(accelerator, save_every_steps: int, save_every_epoch: bool,
                                  resume_from: str | None) -> None:
    """FSDP and DeepSpeed shard the optimizer, and Accelerate offers no plain state-dict API for
    it: resumable checkpoints are refused there rather than written in a pickle format."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) and (
            save_every_steps or save_every_epoch or resume_from):
        raise UserError(f"resumable checkpoints (train.save_every_steps, train.save_every_epoch,"
                        f" train.resume_from) are not available with {accelerator.distributed_type.value}:"
                        " its sharded optimizer state has no safe format in textft yet; train without them"
                        " (the final model is still saved) or use DDP")


def _any_rank(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), "sum").item())


@dataclass
class Checkpointer:
    """Writes and reads the resumable state of one training run (every rank calls both)."""

    accelerator: Any
    root: Path
    keep: int
    model: Any
    optimizer: Any
    scheduler: Any
    state: Any
    """The loop's state: an object with state_dict() / load_state_dict()."""

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def shape(self) -> dict:
        return run_shape(self._unwrapped(), self.optimizer, self.accelerator.num_processes)

    def _write_parts(self, tmp: Path) -> None:
        from safetensors.torch import save_file, save_model

        acc = self.accelerator
        (tmp / f"rng-{acc.process_index}.json").write_text(json.dumps(rng_state()))
        if not acc.is_main_process:
            return
        save_model(self._unwrapped(), str(tmp / "model.safetensors"))
        # The best weights belong to the loop state: a run resumed from this step, even after the
        # run finished and its checkpoints/best was exported, selects among the same candidates.
        if (self.root / BEST).is_dir():
            link_files(self.root / BEST, tmp / BEST)
        tensors, meta = _optimizer_parts(self.optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
        scaler = getattr(acc, "scaler", None)
        (tmp / "loop.json").write_text(json.dumps({
            "state": self.state.state_dict(), "accelerator_step": acc.step,
            "scaler": scaler.state_dict() if scaler is not None else None}))

    def save(self, step: int) -> Path:
        """Write ``step-N`` through a temporary directory, the manifest last, then keep the newest ``keep``.

        A write error (a full disk, a lost mount) on any rank removes the partial directory, leaves
        the earlier checkpoints untouched and surfaces as one UserError on every rank.
        """
        tmp = self.root / f".tmp-step-{step}"
        try:
            return self._save(step, tmp)
        except BaseException:  # Ctrl-C included: no partial directory stays behind
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save(self, step: int, tmp: Path) -> Path:
        acc = self.accelerator
        final = self.root / f"step-{step}"
        failure = None
        try:
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        except OSError as e:
            failure = disk_error(e)
        if not _any_rank(acc, failure is not None):
            try:
                self._write_parts(tmp)
            except (OSError, RuntimeError) + _safetensor_error() as e:
                if (failure := disk_error(e)) is None:
                    raise
        if not _any_rank(acc, failure is not None) and acc.is_main_process:
            try:
                normal_modes(tmp)
                files = {str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                         for f in sorted(tmp.rglob("*")) if f.is_file()}
                (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files,
                                                        "run": self.shape()}, indent=1))
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except OSError as e:
                failure = disk_error(e)
            else:
                done = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name)))
                for _, old in done[:-self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
        if _any_rank(acc, failure is not None):
            raise UserError(f"could not write checkpoint '{final}': {failure or 'another process failed to write'};"
                            " earlier checkpoints are intact")
        acc.wait_for_everyone()
        return final

    def load(self, path: Path) -> None:
        """Verify ``path`` (manifest, SHA-256 of every file, run shape), then load it into this run."""
        from safetensors.torch import load_file, load_model

        where = f"'train.resume_from': checkpoint '{path}'"
        if problem := checkpoint_problem(path, verify_hashes=True):
            raise UserError(f"{where} cannot be used: {problem}")
        data, _ = _read_manifest(path)
        if problems := _shape_problems(data.get("run") or {}, self.shape()):
            raise UserError([f"{where} belongs to another kind of run: {p}" for p in problems])
        acc = self.accelerator
        try:
            model = self._unwrapped()
            device = next(model.parameters()).device
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
            if missing or unexpected:
                raise ValueError(f"weights missing {missing[:3]}, unexpected {unexpected[:3]}")
            _load_optimizer(self.optimizer, load_file(str(path / "optimizer.safetensors")),
                            json.loads((path / "optimizer.json").read_text()))
            self.scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
            loop = json.loads((path / "loop.json").read_text())
            self.state.load_state_dict(loop["state"])
            acc.step = loop["accelerator_step"]
            if loop.get("scaler") is not None and getattr(acc, "scaler", None) is not None:
                acc.scaler.load_state_dict(loop["scaler"])
            set_rng_state(json.loads((path / f"rng-{acc.process_index}.json").read_text()))
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) + _safetensor_error() as e:
            raise UserError(f"{where} cannot be loaded: {' '.join(str(e).split())[:300]}") from None


    def restore_best(self, path: Path) -> None:
        """``root/best`` as it was when the checkpoint at ``path`` was written (main process): none
        when nothing was best yet, never a best of steps after it."""
        if not self.accelerator.is_main_process:
            return
        if (path / BEST).is_dir():
            write_atomically(self.root / BEST, lambda tmp: link_files(path / BEST, tmp))
        else:
            shutil.rmtree(self.root / BEST, ignore_errors=True)


def link_files(src: Path, dst: Path) -> None:
    """Hard links in ``dst`` to the files of ``src`` (copies where links are impossible). Safe because
    textft never rewrites a file in place: a new best is a new directory swapped in."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        link_or_copy(f, dst / f.name)


def _safetensor_error() -> tuple[type, ...]:
    from safetensors import SafetensorError

    return (SafetensorError,)


def save_best(accelerator, model, root: Path, info: dict) -> None:
    """The best weights so far, in ``root/best`` (swapped in atomically), with what made them best;
    of a LoRA model only what trains (the adapter and the head): the rest never changes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)

        def write(tmp: Path) -> None:
            if is_peft_model(unwrapped):
                from safetensors.torch import save_file

                save_file({k: v.contiguous() for k, v in adapter_state(unwrapped, state_dict).items()},
                          str(tmp / ADAPTER_WEIGHTS))
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            (tmp / "best.json").write_text(json.dumps(info))

        write_atomically(root / BEST, write)
    accelerator.wait_for_everyone()


def load_best(accelerator, model, root: Path) -> dict | None:
    """Load ``root/best`` weights into ``model`` on every rank; returns its info, or None if absent."""
    from safetensors.torch import load_file

    best = root / BEST
    if not (best / "best.json").is_file():
        return None
    unwrapped = accelerator.unwrap_model(model)
    if is_peft_model(unwrapped):
        load_adapter_state(unwrapped, load_file(best / ADAPTER_WEIGHTS))
        return json.loads((best / "best.json").read_text())
    missing, unexpected = unwrapped.load_state_dict(load_file(best / "model.safetensors"), strict=False)
    if unexpected or [k for k in missing if k in dict(unwrapped.named_parameters())]:
        raise RuntimeError(f"best checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    return json.loads((best / "best.json").read_text())
