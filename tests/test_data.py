import json
from collections import Counter

import csv

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import toy_rows, write_jsonl
from textft.config import DataConfig, UserError
from textft.data import load_eval_split, load_splits
from textft.tasks.single_label import SingleLabel


def cfg(**kw):
    return DataConfig(**kw)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet"])
def test_local_formats_load_with_labels(tmp_path, fmt):
    rows = toy_rows(40, 0)
    path = tmp_path / f"train.{fmt}"
    if fmt in ("jsonl", "json"):
        write_jsonl(path, rows)
    elif fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"], delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    data = load_splits(cfg(train_file=str(path), validation_split=0.25), seed=0)
    assert data.label_names == ["neg", "pos"]
    assert set(data.splits) == {"train", "validation"}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 40
    row = data.splits["train"][0]
    assert set(row) == {"text", "labels"} and isinstance(row["text"], str)
    original = {r["text"]: r["label"] for r in rows}
    for r in data.splits["validation"]:
        assert data.label_names[r["labels"]] == original[r["text"]]


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"review": r["text"], "sentiment": r["label"]} for r in toy_rows(20, 0)])
    data = load_splits(cfg(train_file=str(path), text_column="review", label_column="sentiment"))
    assert data.splits["train"].column_names == ["text", "labels"]


def test_the_data_is_named_by_its_file_unless_a_source_name_is_given(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", toy_rows(20, 0))
    assert load_splits(cfg(train_file=str(path))).source == str(path)
    # a service stores uploads under its own layout: reports and model cards name the upload instead
    named = load_splits(cfg(train_file=str(path), source_name="reviews.jsonl (ds_0123456789)"))
    assert named.source == "reviews.jsonl (ds_0123456789)"


def test_integer_labels_keep_their_values_and_can_be_named(tmp_path):
    rows = [{"text": r["text"], "label": int(r["label"] == "pos")} for r in toy_rows(20, 0)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    assert load_splits(cfg(train_file=str(path))).label_names == ["0", "1"]
    named = load_splits(cfg(train_file=str(path), label_names=["negative", "positive"]))
    assert named.label_names == ["negative", "positive"]
    by_text = {r["text"]: r["label"] for r in rows}
    assert all(r["labels"] == by_text[r["text"]] for r in named.splits["train"])


def test_classlabel_names_are_kept(tmp_path):
    rows = toy_rows(20, 0)
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    ds = datasets.Dataset.from_dict({"text": [r["text"] for r in rows],
                                     "label": [int(r["label"] == "pos") for r in rows]}, features=features)
    path = tmp_path / "train.parquet"
    ds.to_parquet(path)
    data = load_splits(cfg(train_file=str(path)))
    assert data.label_names == ["negative", "positive"]


def test_label_map_comes_from_training_split_in_sorted_order(tmp_path):
    rows = [{"text": f"text {i}", "label": lab} for i, lab in enumerate(["b", "c", "a"] * 5)]
    data = load_splits(cfg(train_file=str(write_jsonl(tmp_path / "t.jsonl", rows))))
    assert data.label_names == ["a", "b", "c"]


def test_validation_split_is_stratified_and_seeded(tmp_path):
    rows = [{"text": f"sample number {i}", "label": "rare" if i % 10 == 0 else "common"} for i in range(200)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    a = load_splits(cfg(train_file=str(path), validation_split=0.2), seed=1)
    b = load_splits(cfg(train_file=str(path), validation_split=0.2), seed=1)
    c = load_splits(cfg(train_file=str(path), validation_split=0.2), seed=2)
    val = a.splits["validation"]
    assert len(val) == 40
    assert Counter(val["labels"])[a.label_names.index("rare")] == 4  # 10% of 40, exactly
    assert val["text"] == b.splits["validation"]["text"]
    assert val["text"] != c.splits["validation"]["text"]
    assert not set(val["text"]) & set(a.splits["train"]["text"])


def test_builtin_quickstart_dataset():
    data = load_splits(cfg(dataset="builtin:quickstart"))
    assert data.label_names == ["neg", "pos"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 360, "validation": 60, "test": 60}


def test_dataset_directory_with_hidden_test_labels_skips_the_test_split(tmp_path):
    # GLUE-style layout: a ClassLabel column, and a test split whose labels are all -1.
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = toy_rows(60, 5)
    train = {"sentence": [r["text"] for r in rows], "label": [int(r["label"] == "pos") for r in rows]}
    root = tmp_path / "sst2-like"
    splits = {"train": train, "validation": {k: v[:20] for k, v in train.items()},
              "test": {"sentence": train["sentence"][:10], "label": [-1] * 10}}
    root.mkdir()
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns, features=features).to_parquet(root / f"{split}.parquet")
    data = load_splits(cfg(dataset=str(root), text_column="sentence"))
    assert set(data.splits) == {"train", "validation"}
    assert data.label_names == ["negative", "positive"] and len(data.splits["validation"]) == 20


def problems(**kw):
    with pytest.raises(UserError) as e:
        load_splits(cfg(**kw))
    return "\n".join(e.value.problems)


def test_missing_file_and_bad_extension(tmp_path):
    assert "does not exist" in problems(train_file=str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "train.xlsx"
    bad.write_text("x")
    msg = problems(train_file=str(bad))
    assert "unsupported extension '.xlsx'" in msg and ".csv" in msg


def test_missing_columns_list_found_columns_and_suggest(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"txt": "hello", "labels": "a"}, {"txt": "bye", "labels": "b"}])
    msg = problems(train_file=str(path))
    assert "column 'text' not found" in msg and "txt, labels" in msg and "did you mean 'txt'" in msg
    assert "column 'label' not found" in msg and "did you mean 'labels'" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n")
    assert "empty" in problems(train_file=str(path))


def test_empty_texts_error_with_rows_or_are_dropped(tmp_path):
    rows = toy_rows(20, 0)
    rows[3]["text"] = ""
    rows[7]["text"] = None
    rows[9]["text"] = "   "
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    msg = problems(train_file=str(path))
    assert "3 empty or missing text(s)" in msg and "rows 4, 8, 10" in msg and "drop_empty" in msg
    data = load_splits(cfg(train_file=str(path), drop_empty=True, validation_split=0.2))
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 17


def test_label_unseen_in_training(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_rows(20, 0))
    val_rows = toy_rows(6, 1)
    val_rows[0]["label"] = "posit"
    val = write_jsonl(tmp_path / "val.jsonl", val_rows)
    msg = problems(train_file=str(train), validation_file=str(val))
    assert f"validation split ('{val}') has label(s) never seen in training: posit" in msg and "did you mean 'pos'" in msg


def test_single_class_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"t {i}", "label": "pos"} for i in range(10)])
    assert "only one class ('pos'" in problems(train_file=str(path))


def test_eval_split_maps_labels_by_name(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", toy_rows(10, 0))
    ds, _ = load_eval_split(str(path), None, "text", "label", SingleLabel(["pos", "neg"]))
    by_text = {r["text"]: r["label"] for r in toy_rows(10, 0)}
    assert all(r["labels"] == (0 if by_text[r["text"]] == "pos" else 1) for r in ds)


def test_labels_that_differ_only_by_surrounding_spaces_are_one_class(tmp_path, caplog):
    rows = toy_rows(40, 0)
    for i in range(0, 40, 4):
        rows[i]["label"] = rows[i]["label"] + " "
    rows[1]["label"] = "\t" + rows[1]["label"]
    test = toy_rows(10, 1)
    test[0]["label"] = " pos"
    data = load_splits(cfg(train_file=str(write_jsonl(tmp_path / "t.jsonl", rows)),
                           test_file=str(write_jsonl(tmp_path / "test.jsonl", test))), seed=0)
    assert data.label_names == ["neg", "pos"]
    assert "the train split: removed surrounding whitespace from 11 label(s) in column 'label'" in caplog.text
    assert "the test split: removed surrounding whitespace from 1 label(s)" in caplog.text


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_nan_text_is_missing_not_the_word_nan(tmp_path, fmt):
    rows = toy_rows(40, 0)
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_text(lines + '{"text": NaN, "label": "pos"}\n')
    elif fmt == "csv":  # how pandas writes NaN: an empty field
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows([*rows, {"text": "", "label": "pos"}])
    else:  # how pandas writes a NaN in a text column: a null
        pq.write_table(pa.table({"text": [r["text"] for r in rows] + [None],
                                 "label": [r["label"] for r in rows] + ["pos"]}), path)
    with pytest.raises(UserError, match="1 empty or missing text"):
        load_splits(cfg(train_file=str(path)), seed=0)
    data = load_splits(cfg(train_file=str(path), drop_empty=True), seed=0)
    texts = [t for split in data.splits.values() for t in split["text"]]
    assert len(texts) == 40 and "nan" not in texts and "NaN" not in texts
