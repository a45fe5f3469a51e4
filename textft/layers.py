"""The layers of textft, bottom to top, and the module each holds: the one written picture of the code.

A module imports only from its own layer or below (at the top of the file, inside a function or under
``TYPE_CHECKING`` alike), and no two modules import each other, directly or around a circle.
Presentation registers itself with what it presents: the report sections of a task live with the
reports (``task_reports``) and import the task, never the reverse. ``tests/test_architecture.py``
reads the imports from the code and holds it to this picture; ``ARCHITECTURE.md`` shows it as text.
Nothing imports this module at run time.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("foundation", "files, errors and config: what every other module may use",
     ("errors", "files", "run_dir", "interrupts", "coerce", "config_schema", "config_checks", "config",
      "config_help", "hub_download", "version", "layers", "presets", "run_events")),
    ("data", "data, tokenization and tasks: what a label is, how texts become model inputs",
     ("data", "texts", "tokenization", "packing", "tasks", "tasks.*", "metric_modules", "metrics.*",
      "intervals", "significance", "oos_features", "out_of_scope")),
    ("model", "modeling, the training loop, checkpoints, the recipe and the inference backends",
     ("modeling", "lora", "model_dir", "shared_base", "loop", "checkpoint", "recipe", "sentence_pooling", "few_shot",
      "precision", "onnx_export", "onnx_backend")),
    ("train", "one training run (setup, fit, export) and the saved classifier",
     ("training", "classifier", "calibration", "prediction_files", "sweep_space")),
    ("reports", "run reports, comparisons, evaluation of a saved model, the model card and the Hub",
     ("report_parts", "plots", "templating", "task_reports", "task_reports.*", "report_data", "report", "compare",
      "model_card", "hub", "evaluation")),
    ("serving", "textft serve and the fine-tuning service",
     ("serving", "micro_batching", "service", "service.*")),
    ("cli", "the commands, their entry points and the package's public API",
     ("textft", "__main__", "command_line", "cli", "predict_cli", "calibrate_cli", "configs_cli", "train", "sweep")),
)
"""(name, what it holds, modules) per layer, bottom first; modules are named without ``textft.``
(the package itself is ``textft``), and ``pkg.*`` stands for every module of a subpackage."""

UPWARD_IMPORTS: dict[tuple[str, str], str] = {}
"""(importer, imported) → why: the imports allowed to run back up a layer. None are needed."""


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of a module named as in ``LAYERS`` (``pkg.sub`` for a subpackage's module)."""
    for index, (_, _, modules) in enumerate(LAYERS):
        for name in modules:
            if module == name or (name.endswith(".*") and module.startswith(name[:-1])):
                return index
    raise KeyError(module)
