"""Checks of config values beyond their types: ranges, and settings that only make sense together."""

from __future__ import annotations

from typing import Callable

from textft.config_schema import AUTO, Config, TrainConfig
from textft.errors import closest


def check_values(cfg: Config, problems: list[str]) -> None:
    """Appends to ``problems`` every value outside its valid range or combination."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    _check_train_values(cfg.train, need, problems)
    _check_data_values(cfg, need, problems)


def _check_train_values(t: TrainConfig, need: Callable[[bool, str], None], problems: list[str]) -> None:
    def positive(v) -> bool:
        return v == AUTO or v > 0

    def non_negative(v) -> bool:
        return v == AUTO or v >= 0

    need(positive(t.lr), f"'train.lr' must be > 0, got {t.lr}")
    need(positive(t.head_lr), f"'train.head_lr' must be > 0, got {t.head_lr}")
    need(positive(t.epochs), f"'train.epochs' must be > 0, got {t.epochs}")
    need(t.max_steps is None or t.max_steps > 0, f"'train.max_steps' must be > 0, got {t.max_steps}")
    need(t.batch_size > 0, f"'train.batch_size' must be > 0, got {t.batch_size}")
    need(t.eval_batch_size is None or t.eval_batch_size > 0,
         f"'train.eval_batch_size' must be > 0, got {t.eval_batch_size}")
    need(t.grad_accum_steps >= 1, f"'train.grad_accum_steps' must be >= 1, got {t.grad_accum_steps}")
    need(t.weight_decay >= 0, f"'train.weight_decay' must be >= 0, got {t.weight_decay}")
    need(0 <= t.warmup_ratio < 1, f"'train.warmup_ratio' must be in [0, 1), got {t.warmup_ratio}")
    need(t.huber_delta > 0, f"'train.huber_delta' must be > 0, got {t.huber_delta}")
    need(t.max_grad_norm >= 0, f"'train.max_grad_norm' must be >= 0, got {t.max_grad_norm}")
    need(0 <= t.label_smoothing < 1, f"'train.label_smoothing' must be in [0, 1), got {t.label_smoothing}")
    need(t.contrastive_weight >= 0, f"'train.contrastive_weight' must be >= 0, got {t.contrastive_weight}")
    need(t.contrastive_temperature > 0,
         f"'train.contrastive_temperature' must be > 0, got {t.contrastive_temperature}")
    need(non_negative(t.eval_every_steps), f"'train.eval_every_steps' must be >= 0, got {t.eval_every_steps}")
    need(t.logging_steps >= 1, f"'train.logging_steps' must be >= 1, got {t.logging_steps}")
    need(t.num_workers >= 0, f"'train.num_workers' must be >= 0, got {t.num_workers}")
    need(non_negative(t.early_stopping_min_steps),
         f"'train.early_stopping_min_steps' must be >= 0, got {t.early_stopping_min_steps}")
    need(non_negative(t.early_stopping_patience),
         f"'train.early_stopping_patience' must be >= 0, got {t.early_stopping_patience}")
    need(t.early_stopping_min_delta >= 0,
         f"'train.early_stopping_min_delta' must be >= 0, got {t.early_stopping_min_delta}")
    need(t.save_every_steps >= 0, f"'train.save_every_steps' must be >= 0, got {t.save_every_steps}")
    need(t.keep_checkpoints >= 1, f"'train.keep_checkpoints' must be >= 1, got {t.keep_checkpoints}")
    need(t.time_budget_s is None or t.time_budget_s > 0, f"'train.time_budget_s' must be > 0, got {t.time_budget_s}")
    cw = t.class_weights
    if isinstance(cw, str):
        need(cw in ("none", "balanced"),
             f"'train.class_weights' must be none, balanced or a mapping {{label: weight}}, got {cw!r}"
             + closest(cw, ["none", "balanced"]))
    elif isinstance(cw, dict):
        bad = [k for k, v in cw.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
        need(not bad, f"'train.class_weights' weights must be positive numbers; bad entries: {bad}")
    elif cw is not None:
        problems.append(f"'train.class_weights' must be none, balanced or a mapping, got {cw!r}")


def _check_data_values(cfg: Config, need: Callable[[bool, str], None], problems: list[str]) -> None:
    d, m = cfg.data, cfg.model
    need(d.max_length >= 8, f"'data.max_length' must be >= 8, got {d.max_length}")
    need(0 < d.validation_split < 1, f"'data.validation_split' must be in (0, 1), got {d.validation_split}")
    need(0 < d.head_fraction < 1, f"'data.head_fraction' must be in (0, 1), got {d.head_fraction}")
    for key in ("max_train_samples", "max_eval_samples"):
        v = getattr(d, key)
        need(v is None or v > 0, f"'data.{key}' must be > 0, got {v}")
    if d.label_names:
        names = [str(n).strip() for n in d.label_names]
        twice = sorted({n for n in names if names.count(n) > 1})
        need(not twice, f"'data.label_names' names {', '.join(repr(n) for n in twice)} more than once; each class"
                        " needs a name of its own")
        need(all(names), "'data.label_names' has an empty name")
    need(bool(d.text_column), "'data.text_column' must not be empty")
    need(bool(d.label_column), "'data.label_column' must not be empty")
    need(d.label_delimiter != "", "'data.label_delimiter' must not be empty (null: labels are not split); YAML reads"
         " a bare | or > as an empty block, so quote the separator: data.label_delimiter='|'")
    need(d.text_pair_column != "", "'data.text_pair_column' must not be empty (null: single texts)")
    need(d.text_pair_column is None or d.text_pair_column != d.text_column,
         f"'data.text_pair_column' must name another column than 'data.text_column' ({d.text_column!r})")
    need(d.text_pair_column is None or d.truncation == "head",
         f"'data.truncation' {d.truncation} cuts single texts; pairs are cut by 'data.pair_truncation'"
         " (longest_first or only_second): remove data.truncation")
    need(d.label_delimiter is None or d.task in ("auto", "multi_label"),
         f"'data.label_delimiter' splits labels into sets, which needs data.task multi_label, got {d.task}")
    if d.dataset is None and d.train_file is None:
        problems.append("no training data: set 'data.dataset' (hub name) or 'data.train_file' (local file)")
    if d.dataset is not None and d.train_file is not None:
        problems.append("set either 'data.dataset' or 'data.train_file', not both")

    need(m.unfreeze_top_k >= 0, f"'model.unfreeze_top_k' must be >= 0, got {m.unfreeze_top_k}")
    need(m.unfreeze_every_epochs > 0, f"'model.unfreeze_every_epochs' must be > 0, got {m.unfreeze_every_epochs}")
    need(m.dropout is None or 0 <= m.dropout < 1, f"'model.dropout' must be in [0, 1), got {m.dropout}")
    need(0 < m.layer_lr_decay <= 1, f"'model.layer_lr_decay' must be in (0, 1], got {m.layer_lr_decay}")
    need(bool(m.name_or_path), "'model.name_or_path' must not be empty")
    need(bool(cfg.output.dir), "'output.dir' must not be empty")
    need(not cfg.output.push_to_hub or bool(cfg.output.hub_repo_id),
         "'output.push_to_hub' needs 'output.hub_repo_id' (e.g. your-name/imdb-bert)")
