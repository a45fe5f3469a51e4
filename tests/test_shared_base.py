"""LoRA adapters on one shared base model (textft.shared_base) and the service's model cache over them:
each adapter answers as its own merged model, whatever ran before it; evicted models answer the
requests already waiting for them."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

CACHE_ATOL = 2e-3
"""The cache predicts at precision auto (CPU bf16 autocast where the CPU has it), the merged model in fp32."""
TEXTS = ["the movie was great", "awful boring plot", "it was quite bad and the ending poor"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Three adapters of the tiny BERT: two, three and two labels, each with its own random LoRA matrices,
    the second of a lower rank (a mixed pass pads it to the others')."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textft import lora
    from textft.config_schema import ModelConfig

    root = tmp_path_factory.mktemp("adapters")
    out = []
    for i, labels in enumerate((["neg", "pos"], ["bad", "good", "meh"], ["no", "yes"])):
        torch.manual_seed(i)
        model = AutoModelForSequenceClassification.from_pretrained(
            tiny_model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={name: k for k, name in enumerate(labels)}, ignore_mismatched_sizes=True)
        config = ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora", lora_rank=4 if i == 1 else 8)
        wrapped = lora.wrap(model, config, str(tiny_model_dir))
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)  # trained adapters are not zero: make each one matter
        lora.write_adapter(wrapped, root / f"a{i}", AutoTokenizer.from_pretrained(tiny_model_dir),
                           {"name_or_path": str(tiny_model_dir)})
        out.append(root / f"a{i}")
    return out


def merged_logits(path) -> np.ndarray:
    import textft

    return textft.load(path, precision="fp32").logits(TEXTS)


def test_adapters_of_one_base_each_answer_as_their_merged_model_in_any_order(adapters):
    import textft
    from textft.shared_base import SharedBase, base_key

    base = SharedBase(*base_key(adapters[0]), torch.device("cpu"))
    shared = [textft.load(a, precision="fp32", shared=(base, f"m{i}")) for i, a in enumerate(adapters)]
    expected = [merged_logits(a) for a in adapters]
    assert [s.labels for s in shared] == [["neg", "pos"], ["bad", "good", "meh"], ["no", "yes"]]
    assert len({id(s.tokenizer) for s in shared}) == 1  # one tokenizer for identical tokenizer files
    for i in (0, 1, 2, 1, 0, 2, 2):
        np.testing.assert_allclose(shared[i].logits(TEXTS), expected[i], atol=1e-5)
    assert not np.allclose(expected[0], expected[2], atol=1e-3)  # the adapters do differ
    base.remove("m0")
    np.testing.assert_allclose(shared[1].logits(TEXTS), expected[1], atol=1e-5)
    assert sorted(base.model.peft_config) == ["adapter_m1", "adapter_m2"]


def test_a_stopped_batcher_fails_what_it_holds_and_a_retired_one_answers_first():
    from textft.micro_batching import MicroBatcher, PredictionFailed

    def slow(texts):
        import time

        time.sleep(0.2)
        return np.zeros((len(texts), 2), dtype=np.float32)

    async def main():
        retired = MicroBatcher(slow, max_batch_size=1, max_wait_s=0.0)
        retired.start()
        waiting = [asyncio.ensure_future(retired.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.05)
        await retired.retire()
        assert [w.result().shape for w in waiting] == [(1, 2)] * 3
        stopped = MicroBatcher(slow, max_batch_size=1, max_wait_s=0.0)
        stopped.start()
        waiting = [asyncio.ensure_future(stopped.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0.05)
        await stopped.stop()
        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        assert any(isinstance(r, PredictionFailed) for r in results)  # failed, not left waiting
        with pytest.raises(PredictionFailed):
            await stopped.submit(["late"])

    asyncio.run(main())


def test_the_cache_keeps_one_base_for_its_adapters_and_evicts_without_leaving_requests_waiting(adapters, tmp_path):
    from textft.service.models import ModelCache

    paths = []
    for i in range(6):  # more adapters than the cache keeps: evictions while other clients wait
        paths.append(tmp_path / f"c{i}")
        shutil.copytree(adapters[i % 3], paths[-1])
    outputs = [2, 3, 2]

    async def main():
        cache = ModelCache(capacity=1, adapter_capacity=3, threads=None)

        async def client(k: int) -> None:
            for j in range(6):
                i = (2 * k + j) % len(paths)
                answer = await asyncio.wait_for(cache.submit(f"m{i}", paths[i], [(TEXTS[0], None)]), 120)
                assert answer.logits.shape == (1, outputs[i % 3])

        await asyncio.gather(*(client(k) for k in range(4)))
        assert cache.weights_loaded() == 1 and len(cache.bases) == 1 and len(cache.loaded) <= 3
        await cache.close()
        assert cache.bases == {} and not cache.retiring

    asyncio.run(main())


def test_a_model_evicted_between_lookup_and_submit_is_found_again(adapters):
    """The batcher a client got was stopped (its model evicted, nothing waiting) before the client
    submitted: that batcher refuses with Retired, and the cache's submit loads the model again."""
    from textft.micro_batching import Retired
    from textft.service.models import ModelCache

    async def main():
        cache = ModelCache(capacity=1, adapter_capacity=1, threads=None)
        stale = await cache.get("m0", adapters[0])
        await cache.get("m1", adapters[1])  # evicts m0, whose batcher has nothing to answer: it stops
        await asyncio.sleep(0.5)
        with pytest.raises(Retired):
            await stale.batcher.submit([(TEXTS[0], None)])
        answers = await asyncio.gather(*(cache.batcher(f"m{i % 2}", adapters[i % 2]).submit([(TEXTS[0], None)])
                                         for i in range(4)))
        for i, answer in enumerate(answers):
            np.testing.assert_allclose(answer.logits, merged_logits(adapters[i % 2])[:1], atol=CACHE_ATOL)
        await cache.close()

    asyncio.run(main())


def test_a_model_asked_for_again_while_it_retires_keeps_its_adapter(adapters):
    """Evicted while a request waits for it, then asked for again: its old batcher answers and its
    adapter leaves the base before it is attached again (not after: the new entry would lose it)."""
    import threading
    import time

    from textft.service.models import ModelCache

    async def main():
        cache = ModelCache(capacity=1, adapter_capacity=2, threads=None)
        await cache.get("m1", adapters[1])  # stays loaded: the base, with m0 attached, stays too
        first = await cache.get("m0", adapters[0])
        base = next(iter(cache.bases.values()))

        def hold_the_base():  # the waiting request (and a reload's warm-up) run only after 0.4 s
            with base.lock:
                time.sleep(0.4)

        threading.Thread(target=hold_the_base).start()
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(first.batcher.submit([(TEXTS[0], None)]))
        await asyncio.sleep(0.05)
        await cache.evict("m0")  # retiring: a request waits for it
        load = cache._load

        def slow_load(*args):  # a reload that ends after the old entry's retire
            loaded = load(*args)
            time.sleep(0.6)
            return loaded

        cache._load = slow_load
        again = await cache.get("m0", adapters[0])
        expected = merged_logits(adapters[0])[:1]
        np.testing.assert_allclose((await asyncio.wait_for(waiting, 30)).logits, expected, atol=CACHE_ATOL)
        answer = await asyncio.wait_for(again.batcher.submit([(TEXTS[0], None)]), 30)
        np.testing.assert_allclose(answer.logits, expected, atol=CACHE_ATOL)
        await cache.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def on_one_base(adapters):
    """The three adapters (2, 3 and 2 labels) on one shared base in fp32, and each one's merged logits."""
    import textft
    from textft.shared_base import SharedBase, base_key

    base = SharedBase(*base_key(adapters[0]), torch.device("cpu"))
    shared = [textft.load(a, precision="fp32", shared=(base, f"m{i}")) for i, a in enumerate(adapters)]
    return base, shared, [merged_logits(a) for a in adapters]


def test_a_mixed_pass_gives_each_row_its_own_adapters_logits(on_one_base):
    base, shared, expected = on_one_base
    rows = [[0, 2], [1], [2, 0, 1]]  # batches of different lengths: padded to one length in the pass
    batches = [(f"m{i}", shared[i]._collate(shared[i].features([TEXTS[r] for r in rows[i]])[0])) for i in range(3)]
    assert len({b["input_ids"].shape[1] for _, b in batches}) > 1
    passes = base.passes
    answers = base.run_mixed(batches)
    assert base.passes == passes + 1
    assert [a.shape for a in answers] == [(2, 2), (1, 3), (3, 2)]
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer.numpy(), expected[i][rows[i]], atol=1e-5)
    # peft's own entry (a plain list of names) takes the same batched layers
    one = shared[0]._collate(shared[0].features(TEXTS)[0])
    names = [f"adapter_m{i}" for i in (2, 0, 2)]
    with torch.inference_mode():
        logits = base.model(**one, adapter_names=names).logits.numpy()
    np.testing.assert_allclose(logits[:, :2], [expected[2][0], expected[0][1], expected[2][2]], atol=1e-5)


def whole_models(base) -> list:
    """The model as peft wraps it, at each level: walking any of them walks every module."""
    return [base.model, base.model.base_model, base.model.get_base_model()]


def test_a_mixed_pass_costs_about_the_same_however_many_adapters_it_mixes(on_one_base, monkeypatch):
    """Every LoRA layer updates all rows at once, whatever adapter each row has: mixing three adapters
    adds their heads and poolers and the stacking of their matrices to a pass, not a pass of each."""
    from torch.profiler import profile

    from peft.tuners.lora import Linear

    base, shared, expected = on_one_base
    layers = sum(isinstance(m, Linear) for m in base.model.modules())

    def pass_ops(names: list[str]) -> int:
        batches = [(n, shared[int(n[1])]._collate(shared[int(n[1])].features([TEXTS[0]])[0])) for n in names]
        with profile() as prof:
            answers = base.run_mixed(batches)
        for (name, _), answer in zip(batches, answers):
            np.testing.assert_allclose(answer.numpy(), expected[int(name[1])][:1], atol=1e-5)
        return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))

    base.run_mixed([("m0", shared[0]._collate(shared[0].features([TEXTS[0]])[0]))])  # finds its modules
    walks = []
    modules = torch.nn.Module.modules
    monkeypatch.setattr(torch.nn.Module, "modules", lambda self: walks.append(self) or modules(self))
    two, three = pass_ops(["m0", "m2", "m2"]), pass_ops(["m0", "m2", "m1"])
    # no walk of the whole model per pass: with 50 adapters attached, that is thousands of modules
    assert not [m for m in walks if m in whole_models(base)], len(walks)
    # A third adapter, of a lower rank, adds its matrices to each layer's stack (padded to the others' rank)
    # and its head and pooler: 317 operations on this model, under 30 per layer; run apart in every LoRA
    # layer, as peft's mixed batches do, it added 725 (1,760 to 2,485), about 60 per layer.
    assert layers >= 8 and three - two < 30 * layers, (two, three, layers)


def test_batches_of_one_adapter_after_another_run_without_walking_the_model(on_one_base, monkeypatch):
    """A batch that runs alone goes through its own adapter the way mixed passes do: switching peft's
    active adapter walks every module of the model (25 ms with 50 adapters on MiniLM), per switch."""
    base, shared, expected = on_one_base
    shared[0].logits(TEXTS)
    walks = []
    modules = torch.nn.Module.modules
    monkeypatch.setattr(torch.nn.Module, "modules", lambda self: walks.append(self) or modules(self))
    passes = base.passes
    for i in (1, 2, 0, 2):
        np.testing.assert_allclose(shared[i].logits(TEXTS), expected[i], atol=1e-5)
    assert base.passes == passes + 4
    assert not [m for m in walks if m in whole_models(base)], len(walks)


def test_adapters_on_different_layers_share_a_pass(adapters, tiny_model_dir, tmp_path):
    """An adapter on some layers only (``model.lora_target_modules``) mixes with one on every layer: the
    layers it lacks leave its rows as the base computes them."""
    import textft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from textft import lora
    from textft.config_schema import ModelConfig
    from textft.shared_base import SharedBase, base_key

    torch.manual_seed(7)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2,
                                                               ignore_mismatched_sizes=True)
    config = ModelConfig(name_or_path=str(tiny_model_dir), transfer="lora", lora_target_modules="query,value")
    wrapped = lora.wrap(model, config, str(tiny_model_dir))
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    lora.write_adapter(wrapped, tmp_path / "qv", AutoTokenizer.from_pretrained(tiny_model_dir),
                       {"name_or_path": str(tiny_model_dir)})
    base = SharedBase(*base_key(adapters[0]), torch.device("cpu"))
    some = textft.load(tmp_path / "qv", precision="fp32", shared=(base, "qv"))
    every = textft.load(adapters[0], precision="fp32", shared=(base, "m0"))
    batches = [(name, c._collate(c.features(TEXTS)[0])) for name, c in (("qv", some), ("m0", every))]
    answers = base.run_mixed(batches)
    np.testing.assert_allclose(answers[0].numpy(), merged_logits(tmp_path / "qv"), atol=1e-5)
    np.testing.assert_allclose(answers[1].numpy(), merged_logits(adapters[0]), atol=1e-5)


def test_the_base_model_is_answered_while_an_adapter_leaves(adapters, monkeypatch):
    """Loading an adapter asks for the base model while another may be leaving: peft deletes the adapter
    before it picks another active one, and asking in between failed (KeyError: the deleted adapter)."""
    import threading

    import textft
    from textft.shared_base import SharedBase, base_key

    base = SharedBase(*base_key(adapters[0]), torch.device("cpu"))
    for i in range(2):
        textft.load(adapters[i], precision="fp32", shared=(base, f"m{i}"))
    tuner, deleted, go_on = base.model.base_model, threading.Event(), threading.Event()
    delete = tuner.delete_adapter

    def slow_delete(*args, **kwargs):
        delete(*args, **kwargs)
        deleted.set()
        go_on.wait(10)

    monkeypatch.setattr(tuner, "delete_adapter", slow_delete)
    leaving = threading.Thread(target=base.remove, args=("m0",), daemon=True)  # peft's active one: the first
    leaving.start()
    assert deleted.wait(10)
    answers = []
    asking = threading.Thread(target=lambda: answers.append(base.base_model()), daemon=True)
    asking.start()
    asking.join(0.2)
    go_on.set()
    leaving.join(10)
    asking.join(10)
    assert answers == [tuner.model]


def test_adapters_detached_and_attached_after_a_mixed_pass_keep_every_answer(adapters):
    """Mixed passes hand each row's adapter to the modules found at the first pass after a change of
    adapters: after a detach and an attach, every adapter, alone or mixed, still answers as its own."""
    import textft
    from textft.shared_base import SharedBase, base_key

    base = SharedBase(*base_key(adapters[0]), torch.device("cpu"))
    shared = {f"m{i}": textft.load(a, precision="fp32", shared=(base, f"m{i}")) for i, a in enumerate(adapters[:2])}
    expected = [merged_logits(a) for a in adapters]

    def check(names):
        batches = [(n, shared[n]._collate(shared[n].features(TEXTS)[0])) for n in names]
        for (name, _), answer in zip(batches, base.run_mixed(batches)):
            np.testing.assert_allclose(answer.numpy(), expected[int(name[1])], atol=1e-5)
        for name in names:
            np.testing.assert_allclose(shared[name].logits(TEXTS), expected[int(name[1])], atol=1e-5)

    check(["m0", "m1"])
    base.remove("m0")
    del shared["m0"]
    check(["m1"])
    shared["m2"] = textft.load(adapters[2], precision="fp32", shared=(base, "m2"))
    check(["m1", "m2"])
    shared["m0"] = textft.load(adapters[0], precision="fp32", shared=(base, "m0"))
    check(["m2", "m0", "m1"])


@pytest.mark.parametrize("case", ["mixed", "mixed pass fails", "two tokenizers"])
def test_callers_waiting_for_the_base_share_one_pass_or_run_alone_when_it_fails(on_one_base, monkeypatch, case):
    """Batches of adapters that wait while a pass runs go through together, one pass for all; a mixed pass
    that fails runs them one adapter at a time, each still with its own answer; batches padded by
    different tokenizers never share a pass."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    base, shared, expected = on_one_base
    if case == "mixed pass fails":
        monkeypatch.setattr(base, "_forward_mixed", lambda calls: 1 / 0)
    if case == "two tokenizers":
        monkeypatch.setitem(base.padding, "adapter_m2", (-1, *base.padding["adapter_m2"][1:]))
    before, mixed_before = base.passes, base.mixed_passes

    def hold_the_base():
        with base.lock:
            time.sleep(0.5)

    holder = threading.Thread(target=hold_the_base)
    holder.start()
    time.sleep(0.05)
    with ThreadPoolExecutor(3) as pool:  # each waits for the lock: all three are pending when it frees
        answers = list(pool.map(lambda i: shared[i].logits(TEXTS), range(3)))
    holder.join()
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer, expected[i], atol=1e-5)
    passes, mixed = {"mixed": (1, 1), "mixed pass fails": (3, 0), "two tokenizers": (2, 1)}[case]
    assert (base.passes - before, base.mixed_passes - mixed_before) == (passes, mixed)
