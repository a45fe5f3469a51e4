"""Loading labelled text: hub datasets or local files → train/validation/test with integer labels.

Every split ends with two columns, ``text`` (str) and ``labels`` (int), plus the label names
taken from the training split (or from a ClassLabel / ``data.label_names``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from textft.config import DataConfig, UserError, closest

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
BUILTIN_DATASETS = {"quickstart": ASSETS / "quickstart"}
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
VALIDATION_NAMES = ("validation", "valid", "val", "dev")
MAX_ROWS_SHOWN = 5


@dataclass
class TaskData:
    splits: DatasetDict
    """train, validation and (optionally) test, each with ``text`` and ``labels``."""
    label_names: list[str]
    """Label name of each class id."""
    source: str
    """What was loaded, for reports."""


def data_files(cfg: DataConfig) -> dict[str, Path]:
    """The local files named in the config, by split, after checking each exists and is readable."""
    files = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}
    files = {k: Path(v) for k, v in files.items() if v}
    if cfg.dataset and cfg.dataset.startswith("builtin:"):
        name = cfg.dataset.split(":", 1)[1]
        if name not in BUILTIN_DATASETS:
            raise UserError(f"'data.dataset': unknown builtin dataset '{name}'{closest(name, BUILTIN_DATASETS)};"
                            f" available: {', '.join('builtin:' + n for n in BUILTIN_DATASETS)}")
        root = BUILTIN_DATASETS[name]
        files = {split: root / f"{split}.jsonl" for split in ("train", "validation", "test")} | files
    return files


def check_files(files: dict[str, Path]) -> list[str]:
    problems = []
    for split, path in files.items():
        key = f"data.{split}_file"
        if not path.is_file():
            problems.append(f"'{key}': file '{path}' does not exist")
        elif path.suffix.lower() not in FORMATS:
            problems.append(f"'{key}': unsupported extension '{path.suffix}' of '{path}';"
                            f" expected one of {', '.join(FORMATS)}{closest(path.suffix.lower(), FORMATS)}")
    return problems


def _load_file(split: str, path: Path) -> Dataset:
    fmt = FORMATS[path.suffix.lower()]
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, **kwargs)
    except Exception as e:  # the loaders raise many types for one cause: a malformed file
        if "corresponds to no data" in str(e) or path.stat().st_size == 0:
            raise UserError(f"'data.{split}_file': '{path}' is empty (no data rows)") from None
        while e.__cause__ is not None:  # "An error occurred while generating the dataset" wraps the reason
            e = e.__cause__
        raise UserError(f"'data.{split}_file': could not read '{path}' as {fmt}: {' '.join(str(e).split())[:300]}") from None


def load_raw(cfg: DataConfig) -> tuple[DatasetDict, str]:
    """Splits as stored (no column or label processing), and a description of the source."""
    files = data_files(cfg)
    if cfg.dataset and not cfg.dataset.startswith("builtin:"):
        try:
            raw = datasets.load_dataset(cfg.dataset, cfg.dataset_config)
        except Exception as e:  # hub errors come as many types; the message says which
            raise UserError(f"'data.dataset': could not load '{cfg.dataset}' from the Hugging Face Hub:"
                            f" {' '.join(str(e).split())[:300]}") from None
        if not isinstance(raw, DatasetDict):
            raw = DatasetDict({"train": raw})
        out = DatasetDict()
        out["train"] = raw["train"] if "train" in raw else None
        if out["train"] is None:
            raise UserError(f"'data.dataset': '{cfg.dataset}' has no 'train' split; found {', '.join(raw)}")
        for name in VALIDATION_NAMES:
            if name in raw:
                out["validation"] = raw[name]
                break
        if "test" in raw:
            labels = column(raw["test"], cfg.label_column) if cfg.label_column in raw["test"].column_names else [None]
            if all(v == -1 for v in labels):
                # GLUE-style benchmarks publish their test split with every label set to -1 (hidden).
                log.warning("'%s': the test split has no labels (all -1); it is skipped", cfg.dataset)
            else:
                out["test"] = raw["test"]
        for split, path in files.items():  # local files override hub splits
            out[split] = _load_file(split, path)
        return out, f"hub:{cfg.dataset}" + (f"/{cfg.dataset_config}" if cfg.dataset_config else "")
    problems = check_files(files)
    if problems:
        raise UserError(problems)
    out = DatasetDict({split: _load_file(split, path) for split, path in files.items()})
    return out, cfg.dataset or str(files["train"])


def _check_columns(raw: DatasetDict, cfg: DataConfig) -> list[str]:
    problems = []
    for split, ds in raw.items():
        for key, col in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
            if col not in ds.column_names:
                problems.append(f"'data.{key}': column '{col}' not found in the {split} split; columns found:"
                                f" {', '.join(ds.column_names)}{closest(col, ds.column_names)}")
    return problems


def _rows(indices: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:MAX_ROWS_SHOWN])
    more = f" and {len(indices) - MAX_ROWS_SHOWN} more" if len(indices) > MAX_ROWS_SHOWN else ""
    return f"row{'s' if len(indices) > 1 else ''} {shown}{more}"


def column(ds: Dataset, name: str) -> list:
    """A whole column as a list. ``ds[name]`` is a lazy column on datasets 4+ whose iteration
    decodes one row at a time (minutes for a million rows); a slice converts it in one go."""
    return ds[name][:]


def label_names_for(train: Dataset, cfg: DataConfig) -> list[str]:
    """Class names in id order: ClassLabel names, ``data.label_names``, or sorted training labels."""
    feature = train.features[cfg.label_column]
    if isinstance(feature, ClassLabel):
        return list(cfg.label_names or feature.names)
    values = [v for v in column(train, cfg.label_column) if v is not None]
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if cfg.label_names:
        return list(cfg.label_names)
    if ints:
        return [str(v) for v in sorted(set(values))]
    return sorted({str(v) for v in values})


def _label_ids(batch, column: str, label2id: dict[str, int], int_names: bool):
    # Integer labels with given names keep their value as the id; everything else maps by name.
    if int_names:
        return {"labels": [int(v) for v in batch[column]]}
    return {"labels": [label2id[str(v)] for v in batch[column]]}


def _clean_split(split: str, ds: Dataset, cfg: DataConfig, label_names: list[str], int_ids: bool,
                 problems: list[str]) -> Dataset | None:
    texts, labels = column(ds, cfg.text_column), column(ds, cfg.label_column)
    if len(ds) == 0:
        problems.append(f"the {split} split is empty")
        return None
    empty = [i for i, t in enumerate(texts) if t is None or not str(t).strip()]
    if empty and not cfg.drop_empty:
        problems.append(f"the {split} split has {len(empty)} empty or missing text(s) in column"
                        f" '{cfg.text_column}' at {_rows(empty)}; fix them or set data.drop_empty=true")
    missing = [i for i, v in enumerate(labels) if v is None]
    if missing:
        problems.append(f"the {split} split has {len(missing)} missing label(s) in column '{cfg.label_column}'"
                        f" at {_rows(missing)}")
    if int_ids:
        bad = sorted({v for v in labels if v is not None and not (isinstance(v, int) and 0 <= v < len(label_names))})
        if bad:
            problems.append(f"the {split} split has label(s) {bad[:10]} in column '{cfg.label_column}' outside"
                            f" 0..{len(label_names) - 1} of data.label_names / the ClassLabel")
    else:
        unseen = sorted({str(v) for v in labels if v is not None} - set(label_names))
        if unseen:
            first = unseen[0]
            problems.append(f"the {split} split has label(s) never seen in training: {', '.join(unseen[:10])}"
                            f"{closest(first, label_names)}; training labels: {', '.join(label_names[:20])}")
    if problems:
        return None
    if empty:
        keep = sorted(set(range(len(ds))) - set(empty))
        log.warning("dropping %d empty text(s) from the %s split (%s)", len(empty), split, _rows(empty))
        ds = ds.select(keep)
        if len(ds) == 0:
            problems.append(f"the {split} split is empty after dropping empty texts")
            return None
    label2id = {n: i for i, n in enumerate(label_names)}
    ds = ds.map(_label_ids, batched=True, fn_kwargs={"column": cfg.label_column, "label2id": label2id,
                                                     "int_names": int_ids},
                remove_columns=[c for c in ds.column_names if c != cfg.text_column],
                desc=f"labels ({split})")
    if cfg.text_column != "text":
        ds = ds.rename_column(cfg.text_column, "text")
    if ds.features["text"].dtype != "string":
        ds = ds.cast_column("text", datasets.Value("string"))
    return ds


def stratified_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split that keeps class proportions (plain random if a class is too rare)."""
    from sklearn.model_selection import train_test_split

    labels = ds["labels"]
    idx = list(range(len(ds)))
    n_val = max(1, round(fraction * len(ds)))
    counts = {c: labels.count(c) for c in set(labels)}
    stratify = labels if min(counts.values()) >= 2 and n_val >= len(counts) else None
    if stratify is None:
        log.warning("validation split is not stratified: some class has fewer than 2 examples"
                    " or the split is smaller than the number of classes")
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return ds.select(sorted(train_idx)), ds.select(sorted(val_idx))


def load_splits(cfg: DataConfig, seed: int = 42) -> TaskData:
    """Load, check and label every split; carve validation from train when none is given."""
    raw, source = load_raw(cfg)
    problems = _check_columns(raw, cfg)
    if problems:
        raise UserError(problems)
    train = raw["train"]
    feature = train.features[cfg.label_column]
    label_names = label_names_for(train, cfg)
    train_labels = column(train, cfg.label_column)
    int_ids = isinstance(feature, ClassLabel) or (
        bool(cfg.label_names) and all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in train_labels if v is not None))
    problems = []
    present = {v for v in train_labels if v is not None}
    if len(present) == 1:
        problems.append(f"the train split has only one class ('{present.pop()}' in column '{cfg.label_column}');"
                        " a classifier needs at least two")
    if cfg.label_names and not int_ids:
        extra = sorted({str(v) for v in train_labels if v is not None} - set(cfg.label_names))
        if extra:
            problems.append(f"'data.label_names' lacks training label(s): {', '.join(extra[:10])}")
    splits = DatasetDict()
    for split, ds in raw.items():
        cleaned = _clean_split(split, ds, cfg, label_names, int_ids, problems)
        if cleaned is not None:
            splits[split] = cleaned
    if problems:
        raise UserError(problems)
    if len(set(splits["train"]["labels"])) < 2:  # possible once empty texts are dropped
        raise UserError(f"the train split has fewer than two classes in column '{cfg.label_column}'")
    if "validation" not in splits:
        splits["train"], splits["validation"] = stratified_split(splits["train"], cfg.validation_split, seed)
    if cfg.max_train_samples and cfg.max_train_samples < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(cfg.max_train_samples))
    if cfg.max_eval_samples:
        for split in ("validation", "test"):
            if split in splits and cfg.max_eval_samples < len(splits[split]):
                splits[split] = splits[split].shuffle(seed=seed).select(range(cfg.max_eval_samples))
    return TaskData(splits=splits, label_names=label_names, source=source)


def load_eval_split(source: str, split: str | None, text_column: str, label_column: str,
                    label2id: dict[str, int], dataset_config: str | None = None) -> tuple[Dataset, str]:
    """One labelled split of a local file or hub dataset, labels mapped to a trained model's ids."""
    path = Path(source)
    if path.suffix.lower() in FORMATS or path.exists():
        problems = check_files({"test": path})
        if problems:
            raise UserError([p.replace("'data.test_file'", "'--data'") for p in problems])
        ds, name = _load_file("test", path), str(path)
    else:
        try:
            raw = datasets.load_dataset(source, dataset_config)
        except Exception as e:  # hub errors come as many types; the message says which
            raise UserError(f"'--data': '{source}' is not a local file and could not be loaded from the"
                            f" Hugging Face Hub: {' '.join(str(e).split())[:300]}") from None
        split = split or next((s for s in ("test", *VALIDATION_NAMES) if s in raw), None)
        if split not in raw:
            raise UserError(f"'--split': '{source}' has no split '{split}'{closest(split, raw)}; splits: {', '.join(raw)}")
        ds, name = raw[split], f"hub:{source}[{split}]"
    cfg = DataConfig(text_column=text_column, label_column=label_column)
    problems = _check_columns(DatasetDict({"evaluation": ds}), cfg)
    if problems:
        raise UserError([p.replace("'data.text_column'", "'--text-column'").replace("'data.label_column'", "'--label-column'")
                         for p in problems])
    feature = ds.features[label_column]
    names = list(label2id)
    if isinstance(feature, ClassLabel):  # map by name, so a dataset's own id order cannot mislabel
        ds = ds.cast_column(label_column, datasets.Value("int64")).map(
            lambda b: {label_column: [feature.names[i] if i is not None and i >= 0 else None
                                      for i in b[label_column]]}, batched=True)
    problems = []
    cleaned = _clean_split("evaluation", ds, cfg, names, False, problems)
    if problems:
        raise UserError(problems)
    return cleaned, name
