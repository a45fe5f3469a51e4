"""Packaged presets: found by name from any directory, a file wins over a preset of the same name,
wrong names get the closest preset, and ``textft configs list|show|path|copy``."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest
import yaml

from textft.cli import main as cli
from textft.config import load_config
from textft.errors import UserError
from textft.presets import find, package_dir, presets, resolve

ROOT = Path(__file__).resolve().parent.parent


def test_presets_live_in_the_package_and_are_package_data():
    assert package_dir() == ROOT / "textft" / "configs"
    assert not (ROOT / "configs").exists()  # one owner: no second copy at the top of the repository
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["textft"]
    assert "configs/**/*.yaml" in patterns
    files = [p for p in package_dir().rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".yaml" for p in files)  # every file is matched by the pattern
    found = presets()
    assert {"quickstart", "tiny", "imdb", "sweeps/default", "accelerate/fsdp"} <= set(found)
    assert len(found) == len(files)
    assert {p.kind for p in found.values()} == {"train", "sweep", "accelerate"}


@pytest.mark.parametrize("name", presets())
def test_every_preset_describes_itself_in_one_line(name):
    preset = presets()[name]
    assert preset.path.read_text().startswith("# ")
    assert 20 <= len(preset.summary) <= 100 and preset.summary.endswith("."), preset.summary
    assert preset.description.startswith(preset.summary)
    assert isinstance(yaml.safe_load(preset.path.read_text()), dict)


def test_a_preset_name_works_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart").model.name_or_path == "builtin:minilm"
    assert resolve("sweeps/default", "sweep") == resolve("default", "sweep") == presets()["sweeps/default"].path


def test_an_existing_file_wins_over_the_preset_of_that_name(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    Path("tiny").write_text("data:\n  dataset: builtin:quickstart\nmodel:\n  name_or_path: builtin:tiny-bert\n"
                            "output:\n  dir: runs/mine\n")
    with caplog.at_level(logging.WARNING):
        assert load_config("tiny").output.dir == "runs/mine"
    assert "using the file" in caplog.text and "not the preset" in caplog.text
    copied = tmp_path / "quickstart.yaml"
    copied.write_text(presets()["quickstart"].path.read_text().replace("runs/quickstart", "runs/edited"))
    assert load_config("quickstart.yaml").output.dir == "runs/edited"  # a path, as before
    assert load_config("quickstart").output.dir == "runs/quickstart"  # the preset


@pytest.mark.parametrize("value, hint", [
    ("quikstart", "did you mean 'quickstart'?"),
    ("configs/quickstart.yaml", "did you mean the preset 'quickstart'?"),
    ("configs/imdb-minilm.yaml", "did you mean the preset 'imdb-minilm'?"),
    ("nothing-like-it", "textft configs list"),
])
def test_a_name_that_is_neither_a_file_nor_a_preset_names_the_closest(tmp_path, monkeypatch, value, hint):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_config(value)
    (problem,) = e.value.problems
    assert f"config '{value}' does not exist" in problem and hint in problem


def test_a_preset_of_another_kind_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="'accelerate/fsdp' is an Accelerate launch config"):
        load_config("accelerate/fsdp")
    with pytest.raises(UserError, match="is a directory"):
        load_config(str(tmp_path))
    with pytest.raises(UserError, match="did you mean the preset 'accelerate/fsdp'"):
        find("fsdp")


def test_configs_list_show_and_path(capsys):
    assert cli(["configs", "list"]) == 0
    out = capsys.readouterr().out
    for preset in presets().values():
        assert f"  {preset.name} " in out and preset.summary in out
    assert out.index("training presets") < out.index("sweep spaces") < out.index("Accelerate launch configs")
    assert cli(["configs", "show", "quickstart"]) == 0
    assert capsys.readouterr().out == presets()["quickstart"].path.read_text()
    assert cli(["configs", "path", "accelerate/single_gpu"]) == 0
    assert Path(capsys.readouterr().out.strip()) == presets()["accelerate/single_gpu"].path
    assert cli(["configs", "show", "quickstrat"]) == 2
    assert "did you mean 'quickstart'" in capsys.readouterr().err


def test_configs_copy_writes_an_editable_file_and_never_overwrites_unasked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["configs", "copy", "quickstart"]) == 0
    assert "train with: textft train --config quickstart.yaml" in capsys.readouterr().out
    original = presets()["quickstart"].path.read_text()
    assert Path("quickstart.yaml").read_text() == original
    Path("quickstart.yaml").write_text("# mine\n")
    assert cli(["configs", "copy", "quickstart"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert Path("quickstart.yaml").read_text() == "# mine\n"  # nothing of the user's replaced
    assert cli(["configs", "copy", "quickstart", "--force"]) == 0
    assert Path("quickstart.yaml").read_text() == original
    Path("sub").mkdir()
    assert cli(["configs", "copy", "accelerate/multi_gpu_ddp", "sub"]) == 0
    assert "accelerate launch --config_file sub/multi_gpu_ddp.yaml" in capsys.readouterr().out
    assert cli(["configs", "copy", "sweeps/default", "space.yaml"]) == 0 and Path("space.yaml").is_file()
    for dest, message in (("nowhere/x.yaml", "directory 'nowhere' does not exist"),
                          ("notes.txt", "must end in .yaml or .yml")):
        assert cli(["configs", "copy", "tiny", dest]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["multi_gpu_ddp.yaml", "quickstart.yaml", "space.yaml", "sub"]


def test_a_sweep_takes_its_config_and_its_space_by_preset_name(tmp_path, monkeypatch):
    from textft.sweep_space import parse_sweep, split_config

    monkeypatch.chdir(tmp_path)
    base_text, section, source = split_config("quickstart", "sweeps/default")
    assert yaml.safe_load(base_text)["model"]["name_or_path"] == "builtin:minilm" and source == "sweeps/default"
    assert "train.lr" in parse_sweep(section, source).space
    with pytest.raises(UserError, match="'quickstart' is a training preset"):
        split_config("quickstart", "quickstart")
