"""Offline fixtures: a tiny random BERT with a tokenizer built from a vocab written here, and
small labelled files in every supported format, all read through the real loaders."""

import json
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per process it starts): the workers already fill the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

POS = ["good", "great", "excellent", "lovely", "superb"]
NEG = ["bad", "awful", "terrible", "boring", "poor"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "quite", "really", "story", "and", "a", "it",
          "music", "ending", "scenes", "cast", "director", "very", "this", "one"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def toy_rows(n: int, seed: int, pos_name="pos", neg_name="neg") -> list[dict]:
    """A learnable task: the label is the polarity of the one sentiment word hidden among fillers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.choices(FILLER, k=rng.randint(4, 14))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if positive else NEG))
        rows.append({"text": " ".join(words), "label": pos_name if positive else neg_name})
    rng.shuffle(rows)
    return rows


TOPICS = ["acting", "music", "ending"]
"""Labels of the multi-label toy task: a text carries a label when it holds that word."""


def multi_label_rows(n: int, seed: int) -> list[dict]:
    """A learnable multi-label task: ``labels`` lists the topic words a text holds (none for a fifth)."""
    rng = random.Random(seed)
    rest = [w for w in FILLER if w not in TOPICS]
    rows = []
    for _ in range(n):
        topics = [] if rng.random() < 0.2 else sorted(rng.sample(TOPICS, rng.choice([1, 1, 2, 3])))
        words = rng.choices(rest, k=rng.randint(4, 10))
        for topic in topics:
            words.insert(rng.randrange(len(words) + 1), topic)
        rows.append({"text": " ".join(words), "labels": topics})
    return rows


def pair_rows(n: int, seed: int) -> list[dict]:
    """A learnable pair task whose answer is in the second text: the label is the polarity of the
    sentiment word of ``text_pair``, while ``text`` holds a word of the opposite polarity, so a model
    that reads the first text alone (or cannot tell the two apart) is wrong every time."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        first = rng.choices(FILLER, k=rng.randint(3, 8)) + [rng.choice(NEG if positive else POS)]
        second = rng.choices(FILLER, k=rng.randint(3, 8))
        second.insert(rng.randrange(len(second) + 1), rng.choice(POS if positive else NEG))
        rng.shuffle(first)
        rows.append({"text": " ".join(first), "text_pair": " ".join(second), "label": "pos" if positive else "neg"})
    rng.shuffle(rows)
    return rows


def regression_rows(n: int, seed: int) -> list[dict]:
    """A learnable regression task: the score is 2.5 per positive word (0 to 3 of them) plus 1, with
    noise, so the values are not whole numbers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 3)
        words = rng.choices(FILLER, k=rng.randint(4, 10))
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS))
        rows.append({"text": " ".join(words), "score": round(1 + 2.5 * k + rng.gauss(0, 0.3), 3)})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    letters = list("abcdefghijklmnopqrstuvwxyz")
    # "a" is both a filler word and a letter: a repeated line would leave a hole in the ids and give
    # the last token an id beyond the model's embeddings.
    tokens = list(dict.fromkeys(SPECIAL + POS + NEG + FILLER + letters + ["##" + c for c in letters] + list(".,!?'")))
    path.write_text("\n".join(tokens) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    from transformers import BertTokenizerFast

    # The vocab path goes positionally: the vocab_file= keyword silently yields an all-[UNK] tokenizer.
    return BertTokenizerFast(str(vocab_file), model_max_length=128)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved 2-layer BERT (random weights) that loads like any hub checkpoint."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory):
    """train / validation / test jsonl files of the learnable toy task."""
    root = tmp_path_factory.mktemp("toy")
    return {"train": write_jsonl(root / "train.jsonl", toy_rows(400, 1)),
            "validation": write_jsonl(root / "validation.jsonl", toy_rows(80, 2)),
            "test": write_jsonl(root / "test.jsonl", toy_rows(80, 3))}


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """train / validation / test jsonl files of the multi-label, pair and regression toy tasks."""
    root = tmp_path_factory.mktemp("tasks")
    make = {"multi_label": multi_label_rows, "pairs": pair_rows, "regression": regression_rows}
    return {task: {split: write_jsonl(root / f"{task}-{split}.jsonl", rows(n, seed))
                   for split, n, seed in (("train", 400, 1), ("validation", 80, 2), ("test", 80, 3))}
            for task, rows in make.items()}


@pytest.fixture
def tiny_args(tiny_model_dir, toy_files, tmp_path):
    """Overrides for a fast tiny run on the toy task; the output goes to a fresh directory."""
    return [f"model.name_or_path={tiny_model_dir}", f"data.train_file={toy_files['train']}",
            f"data.validation_file={toy_files['validation']}", f"data.test_file={toy_files['test']}",
            "data.max_length=32", "train.epochs=1", "train.batch_size=16", "train.lr=2e-3",
            "train.mixed_precision=fp32", "train.logging_steps=5", f"output.dir={tmp_path / 'run'}"]


@pytest.fixture(autouse=True)
def textft_log_to_this_tests_stderr():
    """textft's log handler is made once per process and keeps the stderr it was made with; under
    pytest that may be an earlier test's closed capture, whose write errors would then show up in
    this test's output. Point it at the stderr of the test about to run."""
    import logging
    import sys

    for handler in logging.getLogger("textft").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.stream = sys.stderr  # not setStream(): it flushes the old, possibly closed, stream
    yield


# The fast tier (``python -m pytest -m "not slow"``, <= 90 s on 2 cores) is opt-in: the modules below
# hold unit-sized tests, and test_modules_import reaches every module of the package; a test in them
# that trains, starts a server or waits on a subprocess carries ``@pytest.mark.slow`` itself. Every
# other module (services, browsers, the wheel, training runs, benchmarks) is slow as a whole, so a new
# test module joins the full suite without slowing the tier anyone runs on every change.
FAST_MODULES = {
    "test_architecture.py", "test_bad_input.py", "test_compare.py", "test_config.py", "test_data.py",
    "test_deploy.py", "test_few_shot.py", "test_hf_stack.py", "test_inference.py", "test_loop.py",
    "test_modeling.py", "test_modules_import.py", "test_packing.py", "test_predict_cli.py", "test_presets.py",
    "test_recipe.py", "test_report_escaping.py", "test_run_events.py", "test_sentence_pooling.py",
    "test_service_units.py",
    "test_tasks.py", "test_tokenization.py", "test_web_api.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)


SAME_WORKER = {"test_web_tasks.py": "test_service_tasks.py"}
"""Modules that share session fixtures with another (the first's tests use the second's trained jobs):
pytest-xdist runs them in one work unit, so the fixtures are built once."""


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: no error when the suite runs without xdist
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope (the default here), with the modules of SAME_WORKER in one unit. xdist's own
    --dist loadgroup cannot group modules on this pytest: it renames items through an attribute pytest 9
    no longer reads."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            name = module.rpartition("/")[2]
            return module.removesuffix(name) + SAME_WORKER[name] if name in SAME_WORKER else super()._split_scope(nodeid)

    return ModulesTogether(config, log)


# --- one service with a multi-label and a regression model, shared by test_service_tasks and test_web_tasks
# (SAME_WORKER: one worker trains the two jobs once for both).


@pytest.fixture(scope="session")
def task_service(tmp_path_factory, tiny_model_dir):
    from service_support import ServiceProcess

    root = tmp_path_factory.mktemp("service-tasks")
    svc = ServiceProcess(root / "data", ["--local-models", str(tiny_model_dir), "--save-every-steps", "0",
                                         "--grace", "10"]).start()
    yield svc
    assert svc.stop() in (0, -15), svc.tail()


@pytest.fixture(scope="session")
def task_http(task_service):
    from service_support import create_key

    return task_service.client(create_key(task_service.data_dir, "carol"))


@pytest.fixture(scope="session")
def task_jobs(task_http, task_files, tiny_model_dir):
    """A multi-label and a regression job of ``task_service`` trained to the end: {task: finished job}."""
    from service_support import tiny_overrides, upload, wait_state

    http, columns, ids = task_http, {"multi_label": "labels", "regression": "score"}, {}
    for task, column in columns.items():
        sets = {split: upload(http, path, label_column=column).json()["id"] for split, path in task_files[task].items()}
        resp = http.post("/v1/jobs", json={"dataset": sets["train"], "validation_dataset": sets["validation"],
                                           "test_dataset": sets["test"], "config": "tiny",
                                           "overrides": tiny_overrides(tiny_model_dir, **{"train.epochs": 6})})
        assert resp.status_code == 201, resp.text
        ids[task] = resp.json()["id"]
    jobs = {task: wait_state(http, job_id, ("succeeded", "failed"), timeout=400) for task, job_id in ids.items()}
    for job in jobs.values():
        assert job["state"] == "succeeded", http.get(f"/v1/jobs/{job['id']}/log").text
    return jobs

