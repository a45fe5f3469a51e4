"""Every kind of bad input: one clear line per problem, exit code 2, no traceback, nothing written.

Catalogue of the hostile and careless inputs covered across the suite (72 in all, beyond the
configuration and file cases below that predate it):

| where | bad input | answer | count |
| --- | --- | --- | --- |
| serve (test_serving_hardening) | lone surrogate (alone, in a list, two bad items at once), control-only, zero-width-only, whitespace-only text | 422 naming each item | 6 |
| serve | one invalid text among 15 concurrent requests in one micro-batch (3 trials) | only it fails | 1 |
| serve | a text that breaks the model's forward pass, batched with 15 good ones | only it gets 500, no trace in the body | 1 |
| serve | queue full / request over its time limit / client gone before its batch | 503 + Retry-After / 503 / dropped | 3 |
| serve | maximum-size request (tokeniser cost) / /docs from a CDN / local paths in /metadata | cut before tokenising / local assets / names only | 3 |
| train output.dir (test_output_dir) | `.`, `..`, cwd with a slash, `~/`, above home, `/` | refused, nothing touched | 6 |
| train output.dir | overwrite of a directory textft did not create; resume into one (latest, explicit path) | refused, nothing touched | 3 |
| resume (test_checkpoint) | planted pickle; pickle in place of a tensor file; pickle with a rewritten manifest; Accelerate pickle checkpoint; one changed byte | refused, nothing unpickled | 5 |
| resume | checkpoint of other labels / optimizer layout / model / process count | one clear error | 4 |
| checkpoint write | a full disk (a real tmpfs), in-process and through the CLI | one line, partial removed, previous kept | 2 |
| train signals (test_interrupts) | SIGINT, SIGTERM, SIGTERM during a checkpoint write | one line, 130 / 143, checkpoints whole | 3 |
| train data (below, test_data) | list labels (all rows, some rows), object labels, object texts, number texts | one clear error | 5 |
| train data | NaN text (jsonl, csv, parquet), control-only text | missing / empty, never "nan" | 4 |
| train data | lone surrogate in a JSON file, `label_names=[neg,neg]`, CSV header naming a column twice | one clear error | 3 |
| train data | labels `pos` and `pos ` (train and test split) | stripped, with a warning | 1 |
| train model (below) | empty weights, truncated weights, config of another size, tokenizer of another model | one clear error | 4 |
| predict (test_predict_cli) | lone surrogate, `{"text": NaN}`, an empty CSV cell, a control-only line | one line naming the row | 4 |
| predict | --output that is a symlink, FIFO or device | refused, left as it was | 3 |
| load, train (test_inference, below) | a model directory without tokenizer files | refused, not a 5-token vocabulary | 2 |
| load (test_inference) | out-of-scope temperature 0, negative, NaN, a string | refused | 4 |
| push, train (test_hub, test_config) | local paths, evaluation texts, `${oc.env:...}` values; push_to_hub with no token or a bad repo id | none uploaded or saved; refused before training | 5 |
| serve, accepted on purpose | NUL inside a text, a surrogate pair, U+FFFF, a right-to-left override | 200 | (4) |
"""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import multi_label_rows, pair_rows, regression_rows, toy_rows, write_jsonl
from textft.cli import main as cli


def files(tmp_path, name, rows=None, text=None):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    else:
        write_jsonl(path, rows)
    return path


def case_missing_file(tmp_path):
    return [f"data.train_file={tmp_path / 'nope.jsonl'}"], "does not exist"


def case_bad_extension(tmp_path):
    return [f"data.train_file={files(tmp_path, 'train.txt', text='x')}"], "unsupported extension '.txt'"


def case_missing_text_column(tmp_path):
    rows = [{"review": r["text"], "label": r["label"]} for r in toy_rows(20, 0)]
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "column 'text' not found"


def case_missing_label_column(tmp_path):
    return [f"data.train_file={files(tmp_path, 't.jsonl', toy_rows(20, 0))}", "data.label_column=sentiment"], \
        "column 'sentiment' not found"


def case_empty_dataset(tmp_path):
    return [f"data.train_file={files(tmp_path, 't.csv', text='text,label' + chr(10))}"], "empty"


def case_empty_validation_split(tmp_path):
    return [f"data.train_file={files(tmp_path, 't.jsonl', toy_rows(20, 0))}",
            f"data.validation_file={files(tmp_path, 'v.csv', text='text,label' + chr(10))}"], "is empty"


def case_empty_texts(tmp_path):
    rows = toy_rows(20, 0)
    rows[2]["text"] = None
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "row 3"


def case_unseen_test_label(tmp_path):
    test = toy_rows(10, 1)
    test[0]["label"] = "neutral"
    return [f"data.train_file={files(tmp_path, 't.jsonl', toy_rows(20, 0))}",
            f"data.test_file={files(tmp_path, 'test.jsonl', test)}"], "never seen in training: neutral"


def case_one_class(tmp_path):
    rows = [{"text": f"text {i}", "label": "pos"} for i in range(10)]
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "only one class"


def case_unknown_key(tmp_path):
    return ["train.learning_rate=1e-4"], "unknown key 'train.learning_rate'"


def case_wrong_type(tmp_path):
    return ["train.epochs=many"], "'train.epochs' must be a number"


def case_lr_not_positive(tmp_path):
    return ["train.lr=0"], "'train.lr' must be > 0"


def case_epochs_not_positive(tmp_path):
    return ["train.epochs=0"], "'train.epochs' must be > 0"


def case_unknown_transfer_mode(tmp_path):
    return ["model.transfer=frozen"], "'model.transfer' must be"


def case_missing_model_path(tmp_path):
    return [f"model.name_or_path={tmp_path / 'no-model'}"], "does not exist"


def case_output_dir_not_empty(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("x")
    return [], "exists and is not empty"


def case_label_is_an_object(tmp_path):
    rows = [dict(r, label={"name": r["label"]}) for r in toy_rows(20, 0)]
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "that are objects"


def case_text_is_an_object(tmp_path):
    rows = [dict(r, text={"body": r["text"]}) for r in toy_rows(20, 0)]
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "not texts (objects"


def case_text_is_a_number(tmp_path):
    rows = [dict(r, text=i) for i, r in enumerate(toy_rows(20, 0))]
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "not texts (numbers"


def case_text_is_nan(tmp_path):
    nan_row = '{"text": NaN, "label": "pos"}'  # what Python's json.dumps writes for a float NaN
    lines = "".join(json.dumps(r) + "\n" for r in toy_rows(20, 0)) + nan_row + "\n"
    path = files(tmp_path, "t.jsonl", text=lines)
    return [f"data.train_file={path}"], "1 empty or missing text(s) in column 'text' at row 21"


def case_text_is_only_control_characters(tmp_path):
    rows = toy_rows(20, 0)
    rows[6]["text"] = "\u0000\u200b\u0007"
    return [f"data.train_file={files(tmp_path, 't.jsonl', rows)}"], "empty or missing text(s) in column 'text' at row 7"


def case_text_with_a_lone_surrogate(tmp_path):
    bad_row = '{"text": "x \\ud800", "label": "pos"}'
    lines = "".join(json.dumps(r) + "\n" for r in toy_rows(20, 0)) + bad_row + "\n"
    path = files(tmp_path, "t.jsonl", text=lines)
    return [f"data.train_file={path}"], "surrogate"


def case_duplicate_label_names(tmp_path):
    return ["data.label_names=[neg,neg]"], "'data.label_names' names 'neg' more than once"


def case_csv_with_a_duplicated_header(tmp_path):
    body = "text,label,text" + chr(10) + "".join(f"{r['text']},{r['label']},other" + chr(10) for r in toy_rows(20, 0))
    return [f"data.train_file={files(tmp_path, 't.csv', text=body)}"], "names the column 'text' more than once"


def task_data(tmp_path, train, validation=None, name="t"):
    """Overrides that replace the toy files of tiny_args (no test split) with these rows."""
    args = [f"data.train_file={files(tmp_path, f'{name}.jsonl', train)}", "data.test_file=null",
            f"data.validation_file={files(tmp_path, f'{name}-val.jsonl', validation) if validation else 'null'}"]
    return args


def case_unknown_label_in_validation_lists(tmp_path):
    validation = multi_label_rows(10, 2)
    validation[2]["labels"] = ["acting", "musc"]
    return [*task_data(tmp_path, multi_label_rows(40, 1), validation), "data.label_column=labels"], \
        "the validation split ('" + str(tmp_path / "t-val.jsonl") + "') has label(s) in column 'labels' never seen" \
        " in training: 'musc' at row 3 (did you mean 'music'?)"


def case_label_delimiter_that_splits_nothing(tmp_path):
    rows = "".join(f"{r['text']},{r['labels'][0] if r['labels'] else 'acting'}\n" for r in multi_label_rows(30, 1))
    path = files(tmp_path, "t.csv", text="text,labels\n" + rows)
    return [f"data.train_file={path}", "data.validation_file=null", "data.test_file=null", "data.label_column=labels",
            "data.label_delimiter='|'"], "'data.label_delimiter' '|' splits none of the labels in column 'labels'"


def case_unquoted_yaml_delimiter(tmp_path):
    return ["data.label_delimiter=|"], "quote the separator: data.label_delimiter='|'"


def case_mixed_lists_and_single_labels(tmp_path):
    rows = multi_label_rows(30, 1)
    rows[4]["labels"], rows[9]["labels"] = "music", "acting"
    return [*task_data(tmp_path, rows), "data.label_column=labels"], \
        "mixes lists and single labels in column 'labels': single labels at rows 5, 10"


def case_non_numeric_regression_target(tmp_path):
    rows = regression_rows(30, 1)
    rows[3]["score"] = "high"
    return [*task_data(tmp_path, rows), "data.label_column=score", "data.task=regression"], \
        "has 1 non-numeric target(s) in column 'score' at row 4 (e.g. 'high')"


def case_nan_regression_target(tmp_path):
    rows = "".join(f"{r['text']},{'nan' if i == 1 else r['score']}\n" for i, r in enumerate(regression_rows(30, 1)))
    path = files(tmp_path, "t.csv", text="text,score\n" + rows)
    return [f"data.train_file={path}", "data.validation_file=null", "data.test_file=null", "data.label_column=score",
            "data.task=regression"], f"the train split ('{path}') has 1 missing or NaN target(s) in column 'score' at row 2"


def case_missing_pair_column(tmp_path):
    return [*task_data(tmp_path, pair_rows(30, 1)), "data.text_pair_column=second"], \
        "'data.text_pair_column': column 'second' not found in the train split; columns found: text, text_pair, label"


def case_pairs_with_single_text_truncation(tmp_path):
    return ["data.text_pair_column=text_pair", "data.truncation=head+tail"], "pairs are cut by 'data.pair_truncation'"


def case_metric_of_another_task(tmp_path):
    return [*task_data(tmp_path, regression_rows(30, 1)), "data.label_column=score", "train.metric_for_best=accuracy"], \
        "'train.metric_for_best': accuracy is not a regression metric"


def case_class_weights_for_regression(tmp_path):
    return [*task_data(tmp_path, regression_rows(30, 1)), "data.label_column=score", "train.class_weights=balanced"], \
        "'train.class_weights' weighs classes; a regression task has none"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__[5:])
def test_bad_input_is_one_clear_error(case, tiny_args, tmp_path, capsys):
    overrides, expected = case(tmp_path)
    existed = (tmp_path / "run").exists()
    rc = cli(["train", *tiny_args, *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines and any(expected in line for line in lines), err
    assert "Traceback" not in err
    if not existed:
        assert not (tmp_path / "run").exists()  # nothing written


def test_a_length_past_the_models_positions_is_reported_with_the_datas_own_problems(tiny_args, tmp_path, capsys):
    """Every problem at once: the tiny model reads 128 positions, and the data lacks its text column."""
    rows = [{"review": r["text"], "label": r["label"]} for r in toy_rows(20, 0)]
    rc = cli(["train", *tiny_args, f"data.train_file={files(tmp_path, 't.jsonl', rows)}", "data.max_length=512"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert rc == 2
    assert any("'data.max_length': 512 tokens" in line for line in lines), lines
    assert any("column 'text' not found" in line for line in lines), lines
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "textft", "train", "--config", "tiny",
                           "train.lr=-1", "model.transfer=topk", f"output.dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("error: ") == 2 and "Traceback" not in proc.stderr
    assert "did you mean 'top_k'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_bad_input(tmp_path, capsys):
    assert cli(["evaluate", "--model", str(tmp_path), "--data", "x.jsonl"]) == 2
    assert "not a saved model directory" in capsys.readouterr().err


def test_evaluate_refuses_to_write_over_a_model(tiny_model_dir, capsys):
    before = sorted(p.name for p in tiny_model_dir.iterdir())
    assert cli(["evaluate", "--model", str(tiny_model_dir), "--data", "x.jsonl", "--output", str(tiny_model_dir)]) == 2
    assert "holds a saved model" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == before


def test_unknown_command_suggests(capsys):
    assert cli(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


def broken_model(src, dst, how):
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    if how == "empty weights":
        weights.write_bytes(b"")
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "config of another size":
        config = json.loads((dst / "config.json").read_text())
        config.update(hidden_size=64, intermediate_size=128)
        (dst / "config.json").write_text(json.dumps(config))
    elif how == "tokenizer of another model":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(dst)
        tok.add_tokens(["zzextra"])
        tok.save_pretrained(dst)
    elif how == "no tokenizer files":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (dst / name).unlink(missing_ok=True)
    return dst


MODEL_CASES = [("empty weights", "cannot be read, the file is damaged or incomplete: Error while deserializing header"),
               ("truncated weights", "cannot be read, the file is damaged or incomplete"),
               ("config of another size", "does not match its weights: 39 encoder tensor(s) differ in shape"),
               ("tokenizer of another model", "has 92 tokens but the model only 91 embeddings"),
               ("no tokenizer files", "its tokenizer has no vocabulary (only the 5 special tokens)")]


@pytest.mark.parametrize("how,expected", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_training_from_a_broken_model_directory_is_one_clear_error(how, expected, tiny_args, tiny_model_dir, tmp_path,
                                                                   capsys):
    model = broken_model(tiny_model_dir, tmp_path / "model", how)
    rc = cli(["train", *tiny_args, f"model.name_or_path={model}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
