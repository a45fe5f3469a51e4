"""Every kind of bad input: one clear line per problem, exit code 2, no traceback, nothing written."""

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


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "textft", "train", "--config", "configs/tiny.yaml",
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
