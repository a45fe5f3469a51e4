"""output.dir is the user's disk: textft replaces only directories it created, never the current,
home or root directory, and resumes only into its own run directories. Every refusal is one line,
exit 2, and leaves every file as it was."""

import os
from pathlib import Path

import pytest

from textft.run_dir import RUN_MARKER, is_run_dir
from textft.cli import main as cli


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def users_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "precious.txt").write_text("years of work")
    (path / "sub").mkdir(exist_ok=True)
    (path / "sub" / "notes.md").write_text("more work")
    return path


def refused(args, capsys, *expected):
    rc = cli(["train", *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and all(e in lines[0] for e in expected), err
    assert "Traceback" not in err


def test_overwrite_never_deletes_the_current_directory(tiny_args, tmp_path, monkeypatch, capsys):
    cwd = users_dir(tmp_path / "work")
    monkeypatch.chdir(cwd)
    before = snapshot(cwd)
    refused([*tiny_args, "output.dir=.", "output.overwrite=true"], capsys, "is the current directory")
    refused([*tiny_args, "output.dir=..", "output.overwrite=true"], capsys, "contains the current directory")
    refused([*tiny_args, f"output.dir={cwd}/", "output.overwrite=true"], capsys, "is the current directory")
    assert snapshot(cwd) == before


def test_home_and_root_are_refused(tiny_args, tmp_path, monkeypatch, capsys):
    home = users_dir(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    refused([*tiny_args, "output.dir=~/", "output.overwrite=true"], capsys, "is your home directory")
    refused([*tiny_args, f"output.dir={home.parent}", "output.overwrite=true"], capsys, "contains your home")
    refused([*tiny_args, "output.dir=/", "output.overwrite=true"], capsys, "is the root directory")
    assert snapshot(home) == before


def test_overwrite_refuses_a_directory_textft_did_not_create(tiny_args, tmp_path, capsys):
    out = users_dir(tmp_path / "run")
    (out / "config.json").write_text("{}")  # a model of someone else's, say
    before = snapshot(out)
    refused([*tiny_args, "output.overwrite=true"], capsys, "not a directory textft train created", "not deleted")
    assert snapshot(out) == before


def test_resume_latest_touches_nothing_outside_a_run_directory(tiny_args, tmp_path, capsys):
    out = users_dir(tmp_path / "run")
    before = snapshot(out)
    refused([*tiny_args, "train.resume_from=latest"], capsys, "not a textft run directory")
    refused([*tiny_args, "train.resume_from=latest", "output.overwrite=true"], capsys, "not a textft run directory")
    assert snapshot(out) == before


def test_resume_from_a_checkpoint_into_someone_elses_directory_is_refused(tiny_args, tmp_path, capsys):
    ckpt = tmp_path / "elsewhere" / "step-10"
    ckpt.mkdir(parents=True)
    out = users_dir(tmp_path / "run")
    before = snapshot(out)
    refused([*tiny_args, f"train.resume_from={ckpt}"], capsys, "not a textft run directory")
    assert snapshot(out) == before


def test_overwrite_replaces_textft_runs_and_empty_directories(tiny_args, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # empty: fine
    assert cli(["train", *tiny_args, "train.max_steps=3"]) == 0
    assert (out / RUN_MARKER).is_file() and is_run_dir(out)  # kept through the final atomic swap
    (out / "stale.txt").write_text("from the previous run")
    assert cli(["train", *tiny_args, "train.max_steps=3", "output.overwrite=true"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    # A run of an earlier version (no marker) still counts as textft's own: config plus model.
    os.remove(out / RUN_MARKER)
    assert is_run_dir(out)
    assert cli(["train", *tiny_args, "train.max_steps=3", "output.overwrite=true"]) == 0


@pytest.mark.parametrize("present", [["textft_config.yaml"], ["config.json", "model.safetensors"], []])
def test_a_lone_config_or_model_is_not_a_run(tmp_path, present):
    for name in present:
        (tmp_path / name).write_text("x")
    assert not is_run_dir(tmp_path)


def test_the_atomic_writer_replaces_only_regular_files_and_follows_a_linked_directory(tmp_path):
    from textft.errors import UserError
    from textft.files import replace_file, write_atomically

    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "link.json").symlink_to(tmp_path / "precious.txt")
    os.mkfifo(tmp_path / "pipe.json")
    for name, what in (("link.json", "symbolic link"), ("pipe.json", "named pipe")):
        with pytest.raises(UserError, match=what):
            replace_file(tmp_path / name, "{}")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="is a file; name a directory"):
        write_atomically(tmp_path / "precious.txt", lambda tmp: (tmp / "x").write_text("x"))
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    # A run directory linked to a larger disk is written where the link points.
    (tmp_path / "big").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "big")
    write_atomically(tmp_path / "runs", lambda tmp: (tmp / "x").write_text("x"))
    assert (tmp_path / "runs").is_symlink() and (tmp_path / "big" / "x").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "link.json", "pipe.json", "precious.txt", "runs"]

