"""Checks of config values beyond their types: ranges, and settings that only make sense together."""

from __future__ import annotations

from typing import Callable

from textft.config_schema import AUTO, Config, TrainConfig
from textft.errors import Problem, closest


def check_values(cfg: Config, problems: list[Problem]) -> None:
    """Appends to ``problems`` every value outside its valid range or combination, each with its key."""
    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            problems.append(Problem(f"'{key}' {message}", key))

    _check_train_values(cfg.train, need, problems)
    _check_data_values(cfg, need, problems)


def _check_train_values(t: TrainConfig, need: Callable[[bool, str, str], None], problems: list[Problem]) -> None:
    def positive(v) -> bool:
        return v == AUTO or v > 0

    def non_negative(v) -> bool:
        return v == AUTO or v >= 0

    need(positive(t.lr), "train.lr", f"must be > 0, got {t.lr}")
    need(positive(t.head_lr), "train.head_lr", f"must be > 0, got {t.head_lr}")
    need(positive(t.epochs), "train.epochs", f"must be > 0, got {t.epochs}")
    need(t.max_steps is None or t.max_steps > 0, "train.max_steps", f"must be > 0, got {t.max_steps}")
    need(t.batch_size > 0, "train.batch_size", f"must be > 0, got {t.batch_size}")
    need(t.eval_batch_size is None or t.eval_batch_size > 0,
         "train.eval_batch_size", f"must be > 0, got {t.eval_batch_size}")
    need(t.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {t.grad_accum_steps}")
    need(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    need(0 <= t.oos_target_rejection < 1, "train.oos_target_rejection",
         f"must be in [0, 1), got {t.oos_target_rejection}")
    need(t.huber_delta > 0, "train.huber_delta", f"must be > 0, got {t.huber_delta}")
    need(t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0, got {t.max_grad_norm}")
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    need(t.contrastive_weight >= 0, "train.contrastive_weight", f"must be >= 0, got {t.contrastive_weight}")
    need(t.contrastive_temperature > 0, "train.contrastive_temperature", f"must be > 0, got {t.contrastive_temperature}")
    need(non_negative(t.eval_every_steps), "train.eval_every_steps", f"must be >= 0, got {t.eval_every_steps}")
    need(t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}")
    need(t.num_workers >= 0, "train.num_workers", f"must be >= 0, got {t.num_workers}")
    need(non_negative(t.early_stopping_min_steps),
         "train.early_stopping_min_steps", f"must be >= 0, got {t.early_stopping_min_steps}")
    need(non_negative(t.early_stopping_patience),
         "train.early_stopping_patience", f"must be >= 0, got {t.early_stopping_patience}")
    need(t.early_stopping_min_delta >= 0,
         "train.early_stopping_min_delta", f"must be >= 0, got {t.early_stopping_min_delta}")
    need(t.save_every_steps >= 0, "train.save_every_steps", f"must be >= 0, got {t.save_every_steps}")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    need(t.time_budget_s is None or t.time_budget_s > 0, "train.time_budget_s", f"must be > 0, got {t.time_budget_s}")
    cw = t.class_weights
    if isinstance(cw, str):
        need(cw in ("none", "balanced"),
             "train.class_weights", f"must be none, balanced or a mapping {{label: weight}}, got {cw!r}"
             + closest(cw, ["none", "balanced"]))
    elif isinstance(cw, dict):
        bad = [k for k, v in cw.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
        need(not bad, "train.class_weights", f"weights must be positive numbers; bad entries: {bad}")
    elif cw is not None:
        problems.append(Problem(f"'train.class_weights' must be none, balanced or a mapping, got {cw!r}",
                                "train.class_weights"))


def _check_data_values(cfg: Config, need: Callable[[bool, str, str], None], problems: list[Problem]) -> None:
    d, m = cfg.data, cfg.model
    need(d.max_length >= 8, "data.max_length", f"must be >= 8, got {d.max_length}")
    need(0 < d.validation_split < 1, "data.validation_split", f"must be in (0, 1), got {d.validation_split}")
    need(0 < d.head_fraction < 1, "data.head_fraction", f"must be in (0, 1), got {d.head_fraction}")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v > 0, f"data.{key}", f"must be > 0, got {v}")
    if d.label_names:
        names = [str(n).strip() for n in d.label_names]
        twice = sorted({n for n in names if names.count(n) > 1})
        need(not twice, "data.label_names", f"names {', '.join(repr(n) for n in twice)} more than once; each class"
                        " needs a name of its own")
        need(all(names), "data.label_names", "has an empty name")
    need(bool(d.text_column), "data.text_column", "must not be empty")
    need(bool(d.label_column), "data.label_column", "must not be empty")
    need(d.label_delimiter != "", "data.label_delimiter", "must not be empty (null: labels are not split); YAML reads"
         " a bare | or > as an empty block, so quote the separator: data.label_delimiter='|'")
    need(d.oos_label is None or bool(str(d.oos_label).strip()), "data.oos_label", "must not be empty (null: no known"
         " out-of-scope examples)")
    need(d.oos_label is None or d.task in ("auto", "single_label"),
         "data.oos_label", f"names out-of-scope examples of a single_label task, got data.task {d.task}")
    need(d.text_pair_column != "", "data.text_pair_column", "must not be empty (null: single texts)")
    need(d.text_pair_column is None or d.text_pair_column != d.text_column,
         "data.text_pair_column", f"must name another column than 'data.text_column' ({d.text_column!r})")
    need(d.text_pair_column is None or d.truncation == "head",
         "data.truncation", f"{d.truncation} cuts single texts; pairs are cut by 'data.pair_truncation'"
         " (longest_first or only_second): remove data.truncation")
    need(d.label_delimiter is None or d.task in ("auto", "multi_label"),
         "data.label_delimiter", f"splits labels into sets, which needs data.task multi_label, got {d.task}")
    if d.dataset is None and d.train_file is None:
        problems.append(Problem("no training data: set 'data.dataset' (hub name) or 'data.train_file' (local file)",
                                "data.train_file"))
    if d.dataset is not None and d.train_file is not None:
        problems.append(Problem("set either 'data.dataset' or 'data.train_file', not both", "data.dataset"))

    need(m.unfreeze_top_k >= 0, "model.unfreeze_top_k", f"must be >= 0, got {m.unfreeze_top_k}")
    need(m.unfreeze_every_epochs > 0, "model.unfreeze_every_epochs", f"must be > 0, got {m.unfreeze_every_epochs}")
    need(m.dropout is None or 0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}")
    need(0 < m.layer_lr_decay <= 1, "model.layer_lr_decay", f"must be in (0, 1], got {m.layer_lr_decay}")
    _check_lora_values(cfg, need)
    need(bool(m.name_or_path), "model.name_or_path", "must not be empty")
    need(bool(cfg.output.dir), "output.dir", "must not be empty")
    need(not cfg.output.push_to_hub or bool(cfg.output.hub_repo_id),
         "output.push_to_hub", "needs 'output.hub_repo_id' (e.g. your-name/imdb-bert)")


LORA_ALL_LINEAR = "all-linear"
"""``model.lora_target_modules`` value for every linear layer of the encoder."""


def lora_targets(value: list[str] | str) -> list[str] | str:
    """``model.lora_target_modules`` as peft takes it: ``all-linear``, or a list of layer names (a
    string of names separated by commas, as a sweep's categorical choice gives them, is split)."""
    if isinstance(value, str):
        if value.strip() == LORA_ALL_LINEAR:
            return LORA_ALL_LINEAR
        value = value.split(",")
    return [str(v).strip() for v in value]


def _check_lora_values(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    m = cfg.model
    need(m.lora_rank >= 1, "model.lora_rank", f"must be >= 1, got {m.lora_rank}")
    need(m.lora_alpha > 0, "model.lora_alpha", f"must be > 0, got {m.lora_alpha}")
    need(0 <= m.lora_dropout < 1, "model.lora_dropout", f"must be in [0, 1), got {m.lora_dropout}")
    targets = lora_targets(m.lora_target_modules)
    if targets != LORA_ALL_LINEAR:
        need(bool(targets) and all(targets), "model.lora_target_modules", "must name linear layers of the encoder"
             f" (e.g. query,value) or be {LORA_ALL_LINEAR}, got {m.lora_target_modules!r}")
        need(LORA_ALL_LINEAR not in targets, "model.lora_target_modules", f"{LORA_ALL_LINEAR} stands alone, not"
             " in a list of layer names")
    need(cfg.output.save_adapter is not True or m.transfer == "lora", "output.save_adapter",
         f"writes the LoRA adapter, and model.transfer is {m.transfer}: set model.transfer=lora, or leave"
         " output.save_adapter at auto")
