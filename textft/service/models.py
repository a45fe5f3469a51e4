"""Finished models: loaded on demand into a small LRU for prediction, streamed out as .tar.gz, pushed to the Hub."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import queue
import tarfile
import threading
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Callable, Iterator

from textft.service.textft_api import (OOS_KEY, THRESHOLDS_KEY, Retired, adapter_base, adapter_subdir, is_adapter_dir,
                                      load_classifier, lower_is_better, micro_batcher, shared_base,
                                      task_default_metric, versus_best)

EXCLUDED = {"checkpoints", "logs"}
"""Run subdirectories that are not part of the model: resume states and tracker logs."""


def model_files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*") if p.is_file() and p.relative_to(run).parts[0] not in EXCLUDED)


MERGED_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
"""Files of a run directory that hold the merged model's weights (with shards named by the index)."""


def stored_adapter(run: Path) -> Path | None:
    """The adapter directory of a LoRA job whose model is stored as its adapter alone, else None."""
    adapter = adapter_subdir(run)
    return adapter if is_adapter_dir(adapter) and not any((run / n).is_file() for n in MERGED_WEIGHTS) else None


def keep_adapter_only(run: Path) -> bool:
    """A finished LoRA job keeps its adapter (and reports, tokenizer, config.json) and drops the merged
    weights, which its base model and the adapter rebuild on download. Returns whether it did."""
    if not is_adapter_dir(adapter_subdir(run)):
        return False
    for path in run.iterdir():
        if path.name in MERGED_WEIGHTS or (path.name.startswith("model-") and path.suffix == ".safetensors"):
            path.unlink()
    return True


def predict_path(run: Path) -> Path:
    """What prediction loads: the adapter of an adapter-only model (onto its shared base), else the run."""
    return stored_adapter(run) or run


def saved_config(run: Path) -> dict | None:
    """The model's config.json, None when it is missing or not a JSON object."""
    try:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def out_of_scope_settings(run: Path, config: dict | None = None) -> dict | None:
    """The out-of-scope threshold ``textft calibrate`` stored in the model's config.json, if any."""
    config = saved_config(run) if config is None else config
    settings = config.get(OOS_KEY) if config is not None else None
    if not isinstance(settings, dict):
        return None
    return {k: settings[k] for k in ("method", "threshold", "label", "temperature") if k in settings}


def decision_thresholds(config: dict | None) -> dict | None:
    """A multi-label model's decision thresholds stored in its config.json ({label: threshold}, how
    they were tuned), None when it answers at 0.5 for every label."""
    stored = config.get(THRESHOLDS_KEY) if config is not None else None
    if not isinstance(stored, dict) or not isinstance(stored.get("values"), dict):
        return None
    return {k: stored[k] for k in ("values", "tuning", "metric", "split") if k in stored}


def input_lengths(classifier, items: list[tuple[str, str | None]]) -> list[dict]:
    """How a loaded classifier reads each (text, text_pair) item: its length in tokens (special tokens
    included), the model's budget, whether it is over it and what is done then (head, tail,
    head+tail, longest_first for pairs, or ``windows`` overlapping windows of ``max_length`` tokens
    whose logits are pooled)."""
    tokenizer, budget = classifier.tokenizer, classifier.max_length
    pairs = bool(classifier.pairs)
    mode = "window" if classifier.long_text == "sliding_window" else classifier.long_text
    mode = (classifier.trained_setting("pair_truncation") or "longest_first") if pairs else mode
    specials = tokenizer.num_special_tokens_to_add(pair=pairs)
    firsts = tokenizer([t for t, _ in items], add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    seconds = (tokenizer([p or "" for _, p in items], add_special_tokens=False, truncation=False,
                         verbose=False)["input_ids"] if pairs else [[] for _ in items])
    out = []
    for first, second in zip(firsts, seconds):
        n = len(first) + len(second) + specials
        info = {"tokens": n, "max_length": budget, "truncated": n > budget, "mode": mode}
        if mode == "window":
            room = budget - specials
            # consecutive windows share `stride` tokens, as the tokenizer's overflowing windows do
            info["windows"] = 1 if n <= budget else 1 + math.ceil((n - specials - room) / (room - classifier.stride))
            info["truncated"] = False
            info["stride"], info["pooling"] = classifier.stride, classifier.pooling
        out.append(info)
    return out


class _Pipe:
    """A file object for tarfile whose writes go to a bounded queue (back-pressure from the client)."""

    def __init__(self, q: queue.Queue, stop: threading.Event):
        self.q, self.stop = q, stop

    def write(self, data: bytes) -> int:
        while True:
            if self.stop.is_set():
                raise BrokenPipeError("the client went away")
            try:
                self.q.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue


def tar_stream(run: Path, root: str) -> Iterator[bytes]:
    """A gzipped tar of the model files of ``run`` under ``root/``, produced while it is sent."""
    q: queue.Queue = queue.Queue(maxsize=32)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_Pipe(q, stop), mode="w|gz") as tar:
                for path in model_files(run):
                    tar.add(path, arcname=f"{root}/{path.relative_to(run)}", recursive=False)
            item = done
        except BaseException as e:  # handed to the consumer, which re-raises it
            item = e
        while not stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    threading.Thread(target=produce, name="textft-tar", daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class Loaded:
    def __init__(self, classifier, batcher, base: tuple | None = None):
        self.classifier, self.batcher = classifier, batcher
        self.base = base
        """The key of the shared base model this adapter runs on (None: a model with its own weights)."""


class CachedBatcher:
    """A model's batcher as seen through the cache: ``submit`` finds the model again when it was evicted
    between lookup and submit (``ModelCache.submit``)."""

    def __init__(self, cache: "ModelCache", model_id: str, path: Path):
        self.cache, self.model_id, self.path = cache, model_id, path

    async def submit(self, items: list, **options):
        return await self.cache.submit(self.model_id, self.path, items, **options)


class ModelCache:
    """Models in memory for prediction, least recently used evicted first; each has its own
    micro-batcher, so concurrent predictions of one model share forward passes (and a batch is always
    one model's).

    ``capacity`` counts what holds a whole set of weights: a full model, or a base model that LoRA
    adapters share. The adapters on the loaded bases (each a few MB) count against
    ``adapter_capacity``. An adapter's batcher runs its batches on the shared base, where the batches
    of several adapters that wait for the base at once share one forward pass, each row through its
    own adapter and head (textft.shared_base)."""

    def __init__(self, capacity: int = 2, device: str = "cpu", threads: int | None = 1,
                 max_batch_size: int = 32, max_wait_ms: float = 5.0, adapter_capacity: int = 64):
        self.capacity, self.adapter_capacity, self.device, self.threads = capacity, adapter_capacity, device, threads
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()
        self.loading: dict[str, asyncio.Future] = {}
        self.bases: dict[tuple, object] = {}
        self.retiring: dict[str, asyncio.Task] = {}
        """Evicted models whose batcher still answers what waited for it, then leaves (see ``evict``)."""
        self._threads_set = False

    def _load(self, model_id: str, path: Path, base: tuple | None):
        if self.threads and not self._threads_set:
            import torch

            # Predictions share the machine with training jobs: keep them to a few cores.
            torch.set_num_threads(self.threads)
            self._threads_set = True
        shared = (self.bases[base], model_id) if base is not None else None
        classifier = load_classifier(path, device=self.device, shared=shared)
        # the first forward pass allocates; keep it off a client's clock
        classifier.logits(["warm up"], pairs=["warm up"] if classifier.pairs else None)
        return classifier

    def weights_loaded(self) -> int:
        """Full models and shared bases in memory: what ``capacity`` bounds."""
        return sum(e.base is None for e in self.loaded.values()) + len({e.base for e in self.loaded.values()} - {None})

    async def get(self, model_id: str, path: Path) -> Loaded:
        """The model's entry, loaded first if needed. A model still retiring (evicted, answering what
        waited for it) finishes that first: its adapter leaves the base before it is attached again."""
        while model_id not in self.loaded and model_id not in self.loading and model_id in self.retiring:
            await asyncio.wait([self.retiring[model_id]])  # never raises, also when close() cancels it
        if model_id in self.loaded:
            self.loaded.move_to_end(model_id)
            return self.loaded[model_id]
        if model_id in self.loading:
            return await asyncio.shield(self.loading[model_id])
        return await self._load_entry(model_id, path)

    async def submit(self, model_id: str, path: Path, items: list, attempts: int = 3, **options):
        """The outputs of ``items`` through the model's batcher (``options``: MicroBatcher.submit's). When
        the model is evicted between finding its entry and submitting (its batcher stopped before
        taking the request: Retired), it is asked for again, up to ``attempts`` times."""
        for attempt in range(attempts):
            entry = await self.get(model_id, path)
            try:
                return await entry.batcher.submit(items, **options)
            except Retired:
                if attempt == attempts - 1:
                    raise

    def batcher(self, model_id: str, path: Path) -> "CachedBatcher":
        """What submits to the model through the cache (``submit`` as a MicroBatcher's, with ``submit``'s retries)."""
        return CachedBatcher(self, model_id, path)

    async def _load_entry(self, model_id: str, path: Path) -> Loaded:
        future = asyncio.get_running_loop().create_future()
        self.loading[model_id] = future
        try:
            base = await asyncio.to_thread(adapter_base, path) if is_adapter_dir(path) else None
            if base is not None and base not in self.bases:
                self.bases[base] = shared_base(base, self.device)
            classifier = await asyncio.to_thread(self._load, model_id, path, base)
            batcher = micro_batcher(classifier, self.max_batch_size, self.max_wait_s)
            batcher.start()
            entry = Loaded(classifier, batcher, base)
            self.loaded[model_id] = entry
            await self._shrink()
            future.set_result(entry)
            return entry
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so waiting on it elsewhere is optional
            raise
        finally:
            del self.loading[model_id]
            self._drop_unused_bases()

    async def _shrink(self) -> None:
        while len(self.loaded) > 1 and (self.weights_loaded() > self.capacity or sum(
                e.base is not None for e in self.loaded.values()) > self.adapter_capacity):
            await self.evict(next(iter(self.loaded)))

    def _drop_unused_bases(self) -> None:
        """Forget bases no loaded adapter uses (nor one being loaded): their model is freed."""
        used = {e.base for e in self.loaded.values()} | {None}
        if not self.loading:
            for key in set(self.bases) - used:
                del self.bases[key]

    async def evict(self, model_id: str, wait: bool = False) -> None:
        """Take a model out of the cache. Requests already waiting for it are answered first, in the
        background (``wait``: before returning); its adapter leaves its base after them."""
        entry = self.loaded.pop(model_id, None)
        if entry is None:
            return self._drop_unused_bases()
        base = self.bases.get(entry.base) if entry.base is not None else None
        self._drop_unused_bases()

        async def retire() -> None:
            try:
                await entry.batcher.retire()
            finally:
                if not entry.batcher.stopped:  # cancelled by close()
                    await entry.batcher.stop()
            if base is not None:  # ``get`` loads this model again only once this is done
                await asyncio.to_thread(base.remove, model_id)

        if model_id in self.retiring:  # evicted before, loaded again: that retire finished already
            await asyncio.wait([self.retiring[model_id]])
        task = self.retiring[model_id] = asyncio.ensure_future(retire())
        task.add_done_callback(lambda done: self.retiring.pop(model_id, None) if self.retiring.get(model_id) is done
                               else None)
        if wait:
            await asyncio.wait([task])

    async def close(self) -> None:
        for model_id in list(self.loaded):
            await self.evict(model_id)
        tasks = list(self.retiring.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- models scored on the same test set --------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _versus(task: str, metric: str, best: str, best_mtime: float, other: str, other_mtime: float) -> dict:
    # keyed on the files' times too: a run directory replaced under the same job id is tested anew
    return versus_best(task, metric, Path(best), Path(other))


def tests_on_shared_test_sets(models: list[dict], run_of: Callable[[str], Path]) -> None:
    """``vs_best`` of every listed model whose test set another model shares: the best of them on the
    task's default metric, and for the others ``textft compare``'s paired test against it (difference,
    p-value, significant at 5%); None for a model alone on its test set."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in models:
        m["vs_best"] = None
        if m.get("test_set") and m.get("task") and (m.get("metrics") or {}).get("test"):
            groups[(m["task"], m["test_set"])].append(m)
    for (task, _), group in groups.items():
        metric = task_default_metric(task)
        scored = [m for m in group if isinstance(m["metrics"]["test"].get(metric), (int, float))]
        if len(scored) < 2:
            continue
        lower = lower_is_better(metric)
        best = sorted(scored, key=lambda m: (m["metrics"]["test"][metric] * (1 if lower else -1), m["created_at"]))[0]
        best_file = run_of(best["id"]) / "predictions" / "test.jsonl"
        for m in scored:
            if m is best:
                m["vs_best"] = {"metric": metric, "best": True, "models": len(scored)}
                continue
            other_file = run_of(m["id"]) / "predictions" / "test.jsonl"
            try:
                test = _versus(task, metric, str(best_file.parent.parent), best_file.stat().st_mtime,
                               str(other_file.parent.parent), other_file.stat().st_mtime)
            except OSError:  # a run directory deleted meanwhile
                continue
            m["vs_best"] = {"metric": metric, "best": False, "model": best["id"], "models": len(scored),
                            **{k: test[k] for k in ("test", "difference", "p_value", "significant", "examples",
                                                    "reason")}}
