"""Resumable checkpoints in textft's own format: nothing is unpickled, every file is checked against
the manifest's SHA-256 before anything loads, a checkpoint of another kind of run is one clear
error, and a full disk (a real one: a small tmpfs) is one line that keeps the previous checkpoint."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import toy_rows, write_jsonl
from textft.checkpoint import MANIFEST, checkpoint_problem, latest_checkpoint
from textft.cli import main as cli

CKPT_ARGS = ["train.max_steps=13", "train.save_every_steps=4", "train.keep_checkpoints=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, toy_files):
    """A finished tiny run of 13 steps that kept its checkpoints (steps 4, 8, 12; none at the last step)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    args = [f"model.name_or_path={tiny_model_dir}", f"data.train_file={toy_files['train']}",
            f"data.validation_file={toy_files['validation']}", "data.max_length=32", "train.batch_size=16",
            "train.lr=2e-3", "train.mixed_precision=fp32", *CKPT_ARGS, f"output.dir={out}"]
    assert cli(["train", *args]) == 0
    return out, args[:-1]


def copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def rehash(ckpt: Path) -> None:
    """Recompute the manifest as an attacker who can write the directory would."""
    import hashlib

    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest["files"] = {str(f.relative_to(ckpt)): {"bytes": f.stat().st_size,
                                                    "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
                         for f in sorted(ckpt.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


class WritesAFile:
    """Unpickling this creates ``path``: the proof that some loader ran code from the checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def one_error(args, capsys) -> str:
    rc = cli(["train", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and lines and "Traceback" not in err, err
    return "\n".join(lines)


def test_checkpoints_hold_only_json_and_safetensors(finished):
    run, _ = finished
    steps = sorted((run / "checkpoints").glob("step-*"))
    assert [p.name for p in steps] == ["step-12", "step-4", "step-8"]
    for step in steps:
        assert checkpoint_problem(step, verify_hashes=True) is None
        for f in (f for f in step.rglob("*") if f.is_file()):
            assert f.suffix in (".json", ".safetensors"), f.name
            if f.suffix == ".json":
                json.loads(f.read_text())
            else:
                header = int.from_bytes(f.read_bytes()[:8], "little")
                json.loads(f.read_bytes()[8:8 + header])  # the safetensors header is JSON, the rest raw tensors


def test_a_planted_pickle_never_runs(finished, tmp_path, capsys):
    run, args = finished
    sentinel = tmp_path / f"pwned-{uuid.uuid4().hex}"
    payload = pickle.dumps(WritesAFile(sentinel))

    # 1. Accelerate's file names next to textft's: not in the manifest, refused before any load.
    planted = copy(run, tmp_path / "planted")
    (planted / "checkpoints" / "step-12" / "custom_checkpoint_0.pkl").write_bytes(payload)
    err = one_error([*args, f"output.dir={planted}", f"train.resume_from={planted / 'checkpoints' / 'step-12'}"],
                    capsys)
    assert "not in its manifest: custom_checkpoint_0.pkl" in err

    # 2. A pickle in place of the optimizer file, same size claimed: the SHA-256 differs.
    swapped = copy(run, tmp_path / "swapped")
    step = swapped / "checkpoints" / "step-12"
    size = (step / "optimizer.safetensors").stat().st_size
    (step / "optimizer.safetensors").write_bytes(payload.ljust(size, b"."))
    err = one_error([*args, f"output.dir={swapped}", f"train.resume_from={step}"], capsys)
    assert "optimizer.safetensors does not match its SHA-256" in err

    # 3. The attacker rewrites the manifest too: the file is read as safetensors, which cannot run code.
    rehash(step)
    err = one_error([*args, f"output.dir={swapped}", "train.resume_from=latest"], capsys)
    assert "cannot be loaded" in err
    assert not sentinel.exists()


def test_an_accelerate_pickle_checkpoint_is_not_loaded(finished, tmp_path, capsys):
    run, args = finished
    old = copy(run, tmp_path / "old")
    step = old / "checkpoints" / "step-99"
    step.mkdir()
    sentinel = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (step / name).write_bytes(pickle.dumps(WritesAFile(sentinel)))
    (step / MANIFEST).write_text(json.dumps({"files": {f.name: f.stat().st_size for f in step.iterdir()}}))
    err = one_error([*args, f"output.dir={old}", f"train.resume_from={step}"], capsys)
    assert "older format" in err and "unpickling" in err
    assert not sentinel.exists()


def test_a_modified_file_of_the_same_size_is_refused(finished, tmp_path, capsys):
    run, args = finished
    bad = copy(run, tmp_path / "bad")
    weights = bad / "checkpoints" / "step-12" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last tensor: same size, different bytes
    weights.write_bytes(bytes(data))
    before = sorted(p.name for p in bad.iterdir())
    err = one_error([*args, f"output.dir={bad}", "train.resume_from=latest"], capsys)
    assert "model.safetensors does not match its SHA-256" in err
    assert sorted(p.name for p in bad.iterdir()) == before


def test_a_checkpoint_of_another_kind_of_run_is_one_clear_error(finished, tmp_path, capsys):
    run, args = finished
    # Three labels instead of two.
    rows = toy_rows(60, 7) + [{"text": "the plot was quite", "label": "neutral"} for _ in range(20)]
    three = write_jsonl(tmp_path / "three.jsonl", rows)
    other = copy(run, tmp_path / "labels")
    err = one_error([*[a for a in args if not a.startswith(("data.train_file", "data.validation_file"))],
                     f"data.train_file={three}", f"output.dir={other}", "train.resume_from=latest"], capsys)
    assert "written for 2 labels (neg, pos), this run has 3 labels (negative" not in err
    assert "written for 2 labels (neg, pos), this run has 3 labels (neg, neutral, pos)" in err
    # Another optimizer layout (feature extraction trains the head only).
    other = copy(run, tmp_path / "transfer")
    err = one_error([*args, "model.transfer=feature_extraction", f"output.dir={other}", "train.resume_from=latest"],
                    capsys)
    assert "parameter groups" in err


def test_another_model_is_one_clear_error(finished, tmp_path, tokenizer, capsys):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    run, args = finished
    wider = tmp_path / "wider-bert"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=128)).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    other = copy(run, tmp_path / "model")
    err = one_error([*[a for a in args if not a.startswith("model.name_or_path")], f"model.name_or_path={wider}",
                     f"output.dir={other}", "train.resume_from=latest"], capsys)
    assert "its model (BertForSequenceClassification, 25,346 parameters) is not this run's" in err


def tmpfs(path: Path, size: str):
    """Mount a real, small filesystem at ``path``, or skip saying why."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs mount, which needs root on Linux")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    tmpfs(mount, "4m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Write ballast until only ``leave`` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    if free > leave:
        with open(disk / "ballast", "ab") as f:
            f.write(b"\0" * (free - leave))


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(small_disk, tiny_args):
    """The disk fills after the first checkpoint; the second cannot be written."""
    from textft.config import UserError, load_config
    from textft.train import train

    out = small_disk / "run"

    def fill_after_first_checkpoint(step, epoch, metrics):
        first = out / "checkpoints" / "step-4"
        assert first.is_dir()
        ckpt_bytes = sum(f.stat().st_size for f in first.iterdir())
        # Room for the best model the evaluation is about to save, not for the next checkpoint.
        fill(small_disk, leave=(first / "model.safetensors").stat().st_size + ckpt_bytes // 3)

    cfg = load_config(None, [*tiny_args[:-1], f"output.dir={out}", "train.save_every_steps=4", "train.eval_every_steps=6",
                             "train.max_steps=20", "train.keep_checkpoints=3"])
    with pytest.raises(UserError) as raised:
        train(cfg, on_evaluate=fill_after_first_checkpoint)
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0] == (f"could not write checkpoint '{out / 'checkpoints' / 'step-8'}': No space"
                                        " left on device; earlier checkpoints are intact")
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name != "best") == ["step-4"]  # no .tmp-step-8 left
    assert checkpoint_problem(root / "step-4", verify_hashes=True) is None
    assert latest_checkpoint(root) == root / "step-4"


def test_a_full_disk_at_the_command_line_prints_one_line(small_disk, tiny_args):
    """The same through ``textft train``: exit 2, one error line, no traceback; resuming later works."""
    out = small_disk / "run"
    fill(small_disk, leave=600_000)  # the run starts, the first checkpoint fits, the second does not
    args = [*tiny_args[:-1], f"output.dir={out}", "train.save_every_steps=4", "train.max_steps=20",
            "train.keep_checkpoints=3", "train.logging_steps=100"]
    proc = subprocess.run([sys.executable, "-m", "textft", "train", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    root = out / "checkpoints"
    kept = latest_checkpoint(root)
    assert kept is not None and checkpoint_problem(kept, verify_hashes=True) is None
    assert not list(root.glob(".tmp-*"))
    os.remove(small_disk / "ballast")
    proc = subprocess.run([sys.executable, "-m", "textft", "train", *args, "train.resume_from=latest"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "eval_report.json").read_text())["resumed_from"].endswith(kept.name)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_training_refuses_resumable_checkpoints_clearly(kind):
    """Accelerate has no plain state-dict API for a sharded optimizer: refused up front, not pickled."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from textft.checkpoint import check_checkpointing_supported
    from textft.config import UserError

    sharded = SimpleNamespace(distributed_type=getattr(DistributedType, kind))
    check_checkpointing_supported(sharded, 0, False, None)  # no checkpoints asked for: fine
    with pytest.raises(UserError, match="resumable checkpoints .* are not available with"):
        check_checkpointing_supported(sharded, 100, False, None)
    with pytest.raises(UserError, match="use DDP"):
        check_checkpointing_supported(sharded, 0, False, "latest")
    check_checkpointing_supported(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), 100, True, "latest")
