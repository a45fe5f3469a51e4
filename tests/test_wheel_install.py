"""textft as a user gets it: a wheel built from this checkout, installed (not editable) into a fresh
virtual environment outside it by docker/install.sh, the script both images run, then used from an
empty directory: the quickstart by preset name, ``textft service`` set up from the environment as
the containers set it up, a key, an upload of the bundled data, a job to success through the API and
a prediction with its model.

The fresh environment borrows this one's installed dependencies (torch included) through a ``.pth``
file instead of downloading them, so the test is quick and offline; pip still checks that the wheel's
requirements, extras included, are met, and only the wheel's own files provide ``textft``.
TEXTFT_WHEEL_FULL_QUICKSTART=1 trains the quickstart in full and compares its printed metrics with the
README's (on a CPU like the one the README was measured on).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from service_support import OFFLINE, ServiceProcess, upload, wait_state

ROOT = Path(__file__).resolve().parent.parent
FULL = os.environ.get("TEXTFT_WHEEL_FULL_QUICKSTART") == "1"

pytestmark = pytest.mark.wheel


def run(cmd: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The fresh environment: its bin directory, the environment variables to run it with, and a
    working directory that is neither the checkout nor under it."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: a build in the checkout would leave build/ and egg-info behind in it.
    src = root / "src"
    shutil.copytree(ROOT / "textft", src / "textft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "--wheel-dir",
         root / "dist", src], 300)
    (wheel,) = (root / "dist").glob("textft-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], 120)
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    60).stdout.strip())
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_textft_test_base.pth").write_text("\n".join(borrowed) + "\n")
    # A user's shell does not have the one-thread setting of a test worker; the full quickstart is
    # compared with the README's numbers, which torch's default threads gave (one thread sums in another
    # order and early stopping ends the run elsewhere).
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", *(("OMP_NUM_THREADS",) if FULL else ()))
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(OFFLINE, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    work = root / "work"
    work.mkdir()
    done = run(["sh", ROOT / "docker" / "install.sh", wheel], 600, env={**env, "PYTHON": str(venv / "bin" / "python")},
               cwd=work)
    assert "installed textft" in done.stdout and "[service,onnx,offline]" in done.stdout
    where = run([venv / "bin" / "python", "-c", "import textft; print(textft.__file__)"], 60, env=env, cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the wheel's files, not the checkout's
    return {"bin": venv / "bin", "env": env, "work": work, "site": site}


def test_the_quickstart_runs_by_preset_name_from_an_empty_directory(installed):
    textft = installed["bin"] / "textft"
    listed = run([textft, "configs", "list"], 60, env=installed["env"], cwd=installed["work"]).stdout
    assert "quickstart" in listed and "accelerate/multi_gpu_ddp" in listed
    budget = [] if FULL else ["train.max_steps=4"]  # CI: a few steps prove the presets, assets and weights load
    out = run([textft, "train", "--config", "quickstart", *budget], 3600 if FULL else 1200, env=installed["env"],
              cwd=installed["work"]).stdout
    assert re.search(r"^model saved to runs/quickstart \(\d+ steps in", out, re.M), out[-2000:]
    assert (installed["work"] / "runs" / "quickstart" / "model.safetensors").is_file()
    if FULL:
        readme = (ROOT / "README.md").read_text()
        block = readme[readme.index("validation: accuracy"):]
        for line in block.splitlines()[:3]:  # the validation, test and best-model lines, exactly as printed
            assert line in out, f"README: {line!r}\nprinted:\n{out[-1500:]}"


def test_the_service_trains_and_predicts_through_the_api(installed):
    textft = installed["bin"] / "textft"
    data = installed["work"] / "service-data"
    env = {**installed["env"], "TEXTFT_DATA_DIR": str(data), "TEXTFT_SAVE_EVERY_STEPS": "0", "TEXTFT_GRACE": "10"}
    key = run([textft, "service", "keys", "create", "--name", "ci"], 120, env=env, cwd=installed["work"]).stdout.strip()
    assert key.startswith("tft_")
    service = ServiceProcess(data, env=env, command=[str(textft)], cwd=installed["work"]).start()
    try:
        http = service.client(key)
        assert {"quickstart", "tiny"} <= {p["name"] for p in http.get("/v1/presets").json()}
        assert http.get("/").status_code == 200  # the web page and its static files ship in the wheel
        bundled = installed["site"] / "textft" / "assets" / "quickstart"
        ids = {}
        for split in ("train", "validation"):
            resp = upload(http, bundled / f"{split}.jsonl")
            assert resp.status_code == 201, resp.text
            ids[split] = resp.json()["id"]
        # tiny: the random 2-layer BERT of the package's assets, a few seconds of training
        resp = http.post("/v1/jobs", json={"dataset": ids["train"], "validation_dataset": ids["validation"],
                                           "config": "tiny", "overrides": {"train.epochs": 1}})
        assert resp.status_code == 201, resp.text
        job = wait_state(http, resp.json()["id"], ("succeeded", "failed", "cancelled"), timeout=600)
        assert job["state"] == "succeeded", (job, http.get(f"/v1/jobs/{job['id']}/log").text[-3000:])
        resp = http.post(f"/v1/models/{job['id']}/predict",
                         json={"inputs": ["The battery lasts all day.", "It broke after two days."]})
        assert resp.status_code == 200, resp.text
        predictions = resp.json()["predictions"]
        assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"neg", "pos"}
    finally:
        assert service.stop() in (0, -15), service.tail()
