"""The GPU path: bf16 and fp16 (GradScaler) training, padding to multiples of 8, fused AdamW,
save/resume, padding-free batches, prediction and serving on the GPU, and a 1-GPU ``accelerate launch``.

Every test here needs CUDA and is skipped without it; ``benchmarks/gpu_check.py`` runs them
(``pytest -m cuda``) on a GPU machine.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

from conftest import toy_rows  # noqa: E402
from textft.train import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def report(run: Path) -> dict:
    return json.loads((run / "eval_report.json").read_text())


def gpu_args(tiny_args, precision: str) -> list[str]:
    return [a for a in tiny_args if not a.startswith("train.mixed_precision")] + [
        f"train.mixed_precision={precision}", "train.epochs=6", "train.lr=3e-3"]


class Spy:
    """Records what the training run really did on the device (shapes, dtypes, optimizer flags)."""

    def __init__(self, monkeypatch):
        from transformers import BertForSequenceClassification

        self.lengths, self.devices, self.autocast, self.adamw, self.scalers = [], set(), set(), [], 0
        forward, adamw_init = BertForSequenceClassification.forward, torch.optim.AdamW.__init__
        grad_scaler_init = torch.amp.GradScaler.__init__
        spy = self

        def counted(model, *args, input_ids=None, **kwargs):
            if model.training:
                spy.lengths.append(input_ids.shape[-1])
                spy.devices.add(input_ids.device.type)
                spy.autocast.add(torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None)
            return forward(model, *args, input_ids=input_ids, **kwargs)

        def adamw(opt, params, *args, **kwargs):
            spy.adamw.append(kwargs)
            adamw_init(opt, params, *args, **kwargs)

        def scaler(obj, *args, **kwargs):
            spy.scalers += 1
            grad_scaler_init(obj, *args, **kwargs)

        monkeypatch.setattr(BertForSequenceClassification, "forward", counted)
        monkeypatch.setattr(torch.optim.AdamW, "__init__", adamw)
        monkeypatch.setattr(torch.amp.GradScaler, "__init__", scaler)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_gpu(tiny_args, precision, monkeypatch):
    spy = Spy(monkeypatch)
    assert main(gpu_args(tiny_args, precision)) == 0
    run = Path(tiny_args[-1].split("=", 1)[1])
    r = report(run)
    assert r["precision"] == precision and r["splits"]["validation"]["accuracy"] >= 0.9
    assert spy.devices == {"cuda"}
    assert spy.autocast == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert spy.scalers == (1 if precision == "fp16" else 0)  # fp16 needs loss scaling, bf16 does not
    assert all(n % 8 == 0 for n in spy.lengths)  # tensor-core friendly padding on the GPU
    assert spy.adamw and spy.adamw[0].get("fused") is True  # one fused kernel for the update
    losses = [e["loss"] for e in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in e]
    assert losses and all(np.isfinite(losses))


def test_kill_and_resume_on_gpu(tiny_args, tmp_path):
    from textft.checkpoint import latest_checkpoint

    args = [a for a in gpu_args(tiny_args, "bf16") if not a.startswith("output.dir")]
    args += ["train.save_every_steps=7", "train.keep_checkpoints=2", "train.logging_steps=1"]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert main([*args, f"output.dir={reference}"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "textft", "train", *args, f"output.dir={run}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    first = latest_checkpoint(run / "checkpoints")
    assert first is not None and not (run / "model.safetensors").exists(), "the run was not killed mid-way"
    assert main([*args, f"output.dir={run}", "train.resume_from=latest"]) == 0
    a, b = report(reference), report(run)
    assert b["resumed_from"].endswith(first.name) and b["optimizer_steps"] == a["optimizer_steps"]
    # CUDA's embedding backward adds with atomics: the same run up to rounding, not bit for bit
    assert abs(a["splits"]["validation"]["accuracy"] - b["splits"]["validation"]["accuracy"]) <= 0.05
    assert abs(a["splits"]["validation"]["loss"] - b["splits"]["validation"]["loss"]) <= 0.05


def test_padding_free_training_matches_padded_logits_on_gpu(tiny_model_dir, tiny_args, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from textft import packing

    assert packing.unavailable_reason(device=torch.device("cuda")) is None
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).cuda().eval()
    texts = [r["text"] for r in toy_rows(12, 4)]
    padded = tokenizer(texts, padding=True, return_tensors="pt").to("cuda")
    features = [{k: v for k, v in tokenizer(t).items() if k != "attention_mask"} for t in texts]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(**padded).logits.float()
        packing.enable(model)
        flat = {k: v.cuda() if torch.is_tensor(v) else v for k, v in packing.flatten(features).items()}
        got = model(**flat).logits.float()
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    assert main([*gpu_args(tiny_args, "bf16"), "train.padding_free=true"]) == 0
    run = Path(tiny_args[-1].split("=", 1)[1])
    assert report(run)["splits"]["validation"]["accuracy"] >= 0.9


def test_predict_and_serve_on_gpu(tiny_args, tmp_path):
    import httpx

    import textft

    assert main(gpu_args(tiny_args, "bf16")) == 0
    run = Path(tiny_args[-1].split("=", 1)[1])
    texts = [r["text"] for r in toy_rows(40, 8)]
    gpu = textft.load(run)  # cuda, auto precision (bf16 weights), torch backend
    assert gpu.device.type == "cuda" and gpu.backend == "torch" and gpu.precision in ("bf16", "fp16")
    cpu = textft.load(run, device="cpu", precision="fp32", backend="torch")
    same = np.mean([a["label"] == b["label"] for a, b in zip(gpu.predict(texts), cpu.predict(texts))])
    assert same >= 0.95

    port = 29000 + os.getpid() % 1000
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "textft", "serve", "--model", str(run), "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        meta = httpx.get(url + "/metadata").json()
        assert "cuda" in json.dumps(meta)
        got = httpx.post(url + "/predict", json={"inputs": texts[:8]}, timeout=30).json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in gpu.predict(texts[:8])]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_accelerate_launch_on_one_gpu(tiny_args, tmp_path):
    args = [a for a in gpu_args(tiny_args, "bf16") if not a.startswith("train.mixed_precision")]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "textft" / "configs" / "accelerate" / "single_gpu.yaml"), str(ROOT / "textft" / "train.py"), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = Path(tiny_args[-1].split("=", 1)[1])
    r = report(run)
    assert r["num_processes"] == 1 and r["precision"] == "bf16"
    assert r["splits"]["validation"]["accuracy"] >= 0.9
