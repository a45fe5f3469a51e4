"""One training run: ``setup(cfg)`` → ``fit_run(run)`` → ``export(run)``.

Setup checks everything the run will touch and builds the data, model, recipe and plan; fit runs the
loop (``textft.loop``) with evaluation, best-model saving, checkpoints and the log; export evaluates
the best weights and writes the run directory (model, tokenizer, config, evaluation reports,
predictions) atomically. Rendering the run report and sharing the model on the Hub are the caller's
(``textft.train``), which passes them in.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from textft import lora
from textft.checkpoint import (BEST, Checkpointer, check_checkpointing_supported, checkpoint_problem,
                               latest_checkpoint, load_best, save_best, save_model)
from textft.config import Config, save_config
from textft import few_shot
from textft.data import TaskData, check_files, data_files, examples_per_class, load_splits
from textft.errors import UserError
from textft.files import write_atomically
from textft.interrupts import stop_on_sigterm
from textft.loop import BestModel, Evaluator, GradualUnfreezing, LoopState, TrainLog, fit, steps_per_epoch
from textft.modeling import (apply_transfer, build_model, check_max_length, check_tokenizer_fits, core_model,
                             count_parameters, enable_activation_checkpointing, load_tokenizer, max_length_problems,
                             model_positions, param_groups, position_limit, resolve_model_path)
from textft.precision import ACCELERATE_NAMES, training_precision
from textft.recipe import Facts, Plan, head_is_fresh, non_embedding_params, resolve
from textft.run_dir import RUN_MARKER, check_output_dir, prepare_output_dir, write_predictions, write_reports
from textft.run_events import error_records, to_line
from textft.tokenization import eval_loader, sort_by_length, tokenize_splits, train_loader

log = logging.getLogger("textft")


# --- setup -----------------------------------------------------------------------------------


def preflight(cfg: Config, more_problems: Iterable[str] = ()) -> list:
    """Cheap checks of everything the run will touch, all reported together before any work (with
    ``more_problems`` the caller found, such as what would stop the push after the run). Returns the
    problems that wait for the data's own (found when it is read), to be reported with them."""
    problems, later = list(more_problems), []
    if problem := check_output_dir(cfg.output.dir, cfg.output.overwrite, cfg.train.resume_from is not None):
        problems.append(problem)
    try:
        resolve_model_path(cfg.model.name_or_path)
    except UserError as e:
        problems += e.problems
    else:
        later = max_length_problems(cfg.data.max_length, model_positions(cfg.model), cfg.model.name_or_path)
    try:
        problems += check_files(data_files(cfg.data))
    except UserError as e:
        problems += e.problems
    if problems:
        raise UserError(problems + later)
    return later


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the first run:
    an application (or a test harness) that swaps stderr between runs in one process still gets the log."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(is_main: bool) -> None:
    # textft's own logger, so that an application's (or pytest's) root handlers stay untouched.
    if not log.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.ERROR)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*null_placement.*")  # pyarrow, inside datasets.sort
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def setup_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t, out_dir = cfg.train, Path(cfg.output.dir)
    precision = training_precision(t.mixed_precision)
    accelerator = Accelerator(
        mixed_precision=ACCELERATE_NAMES[precision], gradient_accumulation_steps=t.grad_accum_steps,
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")))
    setup_logging(accelerator.is_main_process)
    return accelerator, precision


def find_resume(resume_from: str | None, root: Path) -> Path | None:
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = latest_checkpoint(root)
        if found is None:
            log.warning("train.resume_from=latest: no complete checkpoint in %s, starting from scratch", root)
        return found
    path = Path(resume_from)
    problem = "does not exist" if not path.is_dir() else checkpoint_problem(path)
    if problem:
        raise UserError(f"'train.resume_from': checkpoint '{path}' cannot be used: {problem}")
    return path


def flat_config(cfg: Config) -> dict:
    """``section.key`` → value, with values trackers accept (numbers, strings, booleans)."""
    return {f"{s}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
            for s, section in cfg.to_dict().items() for k, v in section.items()}


@dataclass
class Run:
    """Everything a run holds between setup, fit and export."""

    cfg: Config
    recipe: dict[str, str]
    plan: Plan
    accelerator: object
    precision: str
    data: TaskData
    tokenizer: object
    eval_texts: dict[str, list[str]]
    eval_pairs: dict[str, list[str] | None]
    model: object
    optimizer: object
    scheduler: object
    train_dl: object
    evaluator: Evaluator
    loss_fn: Callable
    params: dict[str, int]
    state: LoopState
    ckpt: Checkpointer | None = None
    resume: Path | None = None
    train_log: TrainLog | None = None
    """The run's log, once fit has started it (from then on a failure is recorded in it)."""

    @property
    def task(self):
        return self.data.task

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output.dir)

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"


def load_inputs(cfg: Config, accelerator, precision: str, pending: list = ()):
    """Data, tokenizer and model; the loaders; the facts the recipe resolves ``auto`` settings from
    (``pending``: problems preflight found, reported with the data's own)."""
    t, d, m = cfg.train, cfg.data, cfg.model
    with accelerator.main_process_first():
        try:
            data: TaskData = load_splits(d, t.seed)
        except UserError as e:
            raise UserError([*pending, *e.problems]) from None
        if pending:  # the data is fine: these alone
            raise UserError(list(pending))
        tokenizer = load_tokenizer(m)
        tokenized = tokenize_splits(data.splits, tokenizer, d.max_length, d.truncation, d.head_fraction,
                                    d.pair_truncation)
    data.task.check_metric(t.metric_for_best)  # an explicit metric the task does not compute stops here
    model, initialised_here = build_model(m, data.label_names)
    check_tokenizer_fits(model, tokenizer, m.name_or_path)
    check_max_length(d.max_length, position_limit(model.config), m.name_or_path)
    model.config.update(data.task.model_config())
    amp = precision != "fp32"
    train_dl = train_loader(tokenized["train"], tokenizer, t.batch_size, t.seed, d.group_by_length, amp, t.num_workers,
                            padding_free=t.padding_free)
    eval_sets = {split: sort_by_length(tokenized[split]) for split in ("validation", "test") if split in tokenized}
    eval_dls = {split: eval_loader(ds, tokenizer, t.eval_batch(), amp, t.num_workers)
                for split, ds in eval_sets.items()}
    # Counted as Accelerate will shard the loader (even batches on every process), so the schedule
    # is the same on 1 or N processes.
    batches = math.ceil(len(train_dl) / accelerator.num_processes)
    facts = Facts(non_embedding_params=non_embedding_params(model), fresh_head=head_is_fresh(model, initialised_here),
                  pretrained_encoder=not m.random_init, n_train=len(tokenized["train"]),
                  n_validation=len(tokenized.get("validation", [])), num_labels=len(data.label_names),
                  global_batch=t.batch_size * t.grad_accum_steps * accelerator.num_processes,
                  steps_per_epoch=steps_per_epoch(batches, t.grad_accum_steps), task=data.task.name,
                  default_metric=data.task.default_metric, pairs="text_pair" in tokenized["train"].column_names)
    if data.task.one_class_per_text:
        facts.examples_per_class = examples_per_class(tokenized["train"]["labels"])
    texts = {split: ds["text"] for split, ds in eval_sets.items()}
    pairs = {split: ds["text_pair"] if "text_pair" in ds.column_names else None for split, ds in eval_sets.items()}
    return data, tokenizer, model, train_dl, eval_dls, (texts, pairs), facts, tokenized["train"]


def prepare(cfg: Config, accelerator, model, train_dl, eval_dls: dict, plan: Plan):
    """Optimizer and scheduler, everything through ``accelerator.prepare``, then torch.compile if asked."""
    from transformers import get_scheduler

    t, m = cfg.train, cfg.model
    # fused: one kernel for all parameters instead of a loop of small ops per tensor (CPU and CUDA)
    optimizer = torch.optim.AdamW(param_groups(model, t.lr, t.head_lr, t.weight_decay, m.layer_lr_decay), lr=t.lr,
                                  weight_decay=t.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"))
    model, optimizer, train_dl, *eval_list = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    if steps_per_epoch(len(train_dl), t.grad_accum_steps) != plan.steps_per_epoch:
        raise RuntimeError(f"the sharded loader has {len(train_dl)} batches, which the plan did not count on")
    if t.compile:
        # Compiled here rather than through Accelerator(dynamo_backend=...): Accelerate keeps that
        # setting in process-wide state, so a second run in the same process would silently ignore it.
        model = torch.compile(model)
        log.info("torch.compile: %s (inductor; the first steps compile, later ones run the compiled graph)",
                 type(model).__name__)
    # The scheduler stays out of prepare(): Accelerate would step it once per process.
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=round(t.warmup_ratio * plan.total_steps),
                              num_training_steps=plan.total_steps)
    return model, optimizer, train_dl, dict(zip(eval_dls, eval_list)), scheduler


def setup(cfg: Config, more_problems: Iterable[str] = ()) -> Run:
    """Everything up to the first step: checks, accelerator, data, model, the resolved recipe and plan,
    optimizer, the output directory and, when resuming, the checkpoint's state."""
    from accelerate.utils import set_seed

    pending = preflight(cfg, more_problems)
    accelerator, precision = setup_accelerator(cfg)
    t = cfg.train
    check_checkpointing_supported(accelerator, t.save_every_steps, t.save_every_epoch, t.resume_from)
    set_seed(t.seed)
    data, tokenizer, model, train_dl, eval_dls, (texts, pairs), facts, train_set = \
        load_inputs(cfg, accelerator, precision, pending)
    cfg, recipe, plan = resolve(cfg, facts)
    data.task.configure(cfg.train, cfg.train.metric_for_best)
    loss_fn = data.task.loss_fn(cfg.train, train_set["labels"])
    for key, why in recipe.items():
        section, name = key.split(".", 1)
        log.info("auto %s = %s: %s", key, getattr(getattr(cfg, section), name), why)
    if cfg.model.transfer == "lora":
        model = lora.wrap(model, cfg.model, resolve_model_path(cfg.model.name_or_path))
    params = apply_transfer(model, cfg.model)
    if cfg.model.transfer == "few_shot":
        loss_fn = few_shot.start(model, cfg, len(data.label_names), train_set, tokenizer, train_dl, loss_fn,
                                 accelerator)
        params = count_parameters(model)  # the method adds and freezes the layers that read the embedding
    if cfg.train.padding_free:
        from textft import packing

        if problem := packing.unavailable_reason(core_model(model), accelerator.device):
            raise UserError(f"'train.padding_free': {problem}")
        packing.enable(core_model(model))
    if cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(model)
    log.info("data %s: %s; %s, %d label(s)%s", data.source, ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()),
             data.task.name, len(data.label_names), "; text pairs" if cfg.data.text_pair_column else "")
    log.info("model %s (%s): %s of %s parameters trainable (%.1f%%); precision %s; %d process(es)",
             cfg.model.name_or_path, cfg.model.transfer, f"{params['trainable']:,}", f"{params['total']:,}",
             100 * params["trainable"] / params["total"], precision, accelerator.num_processes)
    model, optimizer, train_dl, eval_dls, scheduler = prepare(cfg, accelerator, model, train_dl, eval_dls, plan)
    run = Run(cfg=cfg, recipe=recipe, plan=plan, accelerator=accelerator, precision=precision, data=data,
              tokenizer=tokenizer, eval_texts=texts, eval_pairs=pairs, model=model, optimizer=optimizer,
              scheduler=scheduler, train_dl=train_dl, evaluator=Evaluator(accelerator, model, eval_dls, data.task),
              loss_fn=loss_fn, params=params, state=LoopState())
    start(run)
    return run


def start(run: Run) -> None:
    """The output directory (replaced only with output.overwrite), the resolved config, and the
    state of the checkpoint to resume from, if any."""
    accelerator, cfg, out_dir = run.accelerator, run.cfg, run.out_dir
    run.ckpt = Checkpointer(accelerator, run.checkpoints, cfg.train.keep_checkpoints, run.model, run.optimizer,
                            run.scheduler, run.state)
    run.resume = find_resume(cfg.train.resume_from, run.checkpoints)
    if run.resume is not None:  # verified and loaded before anything in output.dir changes
        run.ckpt.load(run.resume)
    if accelerator.is_main_process:
        prepare_output_dir(out_dir, cfg.output.overwrite, resuming=cfg.train.resume_from is not None)
        save_config(cfg, out_dir / "textft_config.yaml", run.recipe)
        if run.resume is not None:
            run.ckpt.restore_best(run.resume)
    accelerator.wait_for_everyone()
    if run.resume is not None:
        log.info("resumed from %s: step %d, epoch %d, %d batches into it", run.resume, run.state.step,
                 run.state.epoch, run.state.batches_in_epoch)
    if cfg.train.report_to != "none":
        accelerator.init_trackers("textft", config=flat_config(cfg))


# --- fit -------------------------------------------------------------------------------------


def thin_validation(task, labels: list, metric: str, early_stopping: bool) -> str | None:
    """One line when the validation split misses classes or has fewer than two examples of most of
    them: what it does to early stopping and to the choice of the best model."""
    counts = list(task.label_counts(labels).values())
    if len(counts) < 2:  # one output (regression): no classes to miss
        return None
    missing, thin = sum(c == 0 for c in counts), sum(c < 2 for c in counts)
    if not missing and thin <= len(counts) / 2:
        return None
    kind = task.output_noun
    gaps = ", ".join(part for part in (f"{missing} with no example" if missing else "",
                                       f"{thin} with fewer than 2" if thin else "") if part)
    uses, follow, them = (("early stopping and the choice of the best model", "follow", "them") if early_stopping
                          else ("the choice of the best model", "follows", "it"))
    absent = f" and leaves out the {missing} it has none of" if missing and metric.startswith("macro") else ""
    return (f"validation split: {len(labels)} examples for {len(counts)} {kind} ({gaps}): validation {metric} rests"
            f" on one or two examples per class{absent}, so {uses} {follow} noise as much as the model; more"
            " validation examples per class (a larger data.validation_split, or a data.validation_file) make"
            f" {them} reliable")


def fit_run(run: Run, on_evaluate: Callable[[int, float, dict], None] | None = None) -> None:
    """The loop of ``textft.loop.fit`` with this run's evaluation, best-model saving, checkpoints and log."""
    accelerator, cfg, state, plan = run.accelerator, run.cfg, run.state, run.plan
    t, m = cfg.train, cfg.model
    train_log = run.train_log = TrainLog(accelerator, state, len(run.train_dl), run.out_dir / "train_log.jsonl")
    global_batch = t.batch_size * t.grad_accum_steps * accelerator.num_processes
    train_log.restart(plan.record(global_batch, run.task.name, step=state.step))
    unfreeze = GradualUnfreezing(accelerator.unwrap_model(run.model), m.unfreeze_every_epochs, len(run.train_dl)) \
        if m.transfer == "gradual" else None
    best = BestModel(plan, state, lambda info: save_best(accelerator, run.model, run.checkpoints, info))
    log.info("training: %d optimizer steps (%d per epoch), global batch %d, best model by %s", plan.total_steps,
             plan.steps_per_epoch, global_batch, plan.metric)
    if warning := thin_validation(run.task, run.data.splits["validation"]["labels"], plan.metric, plan.patience > 0):
        log.warning(warning)
    with stop_on_sigterm(accelerator) as stop:
        fit(accelerator, run.model, run.optimizer, run.scheduler, run.train_dl, state, plan,
            loss_fn=run.loss_fn, evaluate=run.evaluator, best=best,
            checkpoint=lambda: run.ckpt.save(state.step), train_log=train_log, unfreeze=unfreeze,
            on_evaluate=on_evaluate, stop=stop, describe=run.task.log_line)


def record_failure(cfg: Config, run: Run | None, e: BaseException) -> None:
    """Append how the run failed to its ``train_log.jsonl`` (``textft.run_events`` error records), from
    the main process: once fit has started the log, or from the start with ``output.log_errors`` (the
    service's jobs, whose output directory is their own). Nothing else of the directory changes; a
    resumed run rewrites its log from the checkpoint, without them."""
    if run is not None and not run.accelerator.is_main_process:
        return
    if run is None and os.environ.get("RANK", "0") != "0":  # Accelerate not set up yet: the launcher's rank
        return
    started = run is not None and run.train_log is not None
    # Before the log starts, only into a directory this run may write (never a protected or foreign one).
    if not started and (not cfg.output.log_errors or check_output_dir(
            cfg.output.dir, cfg.output.overwrite, resuming=cfg.train.resume_from is not None)):
        return
    path = Path(cfg.output.dir) / "train_log.jsonl"
    try:
        if not path.parent.is_dir():  # made here: marked as textft's, so that output.overwrite may replace it
            path.parent.mkdir(parents=True)
            (path.parent / RUN_MARKER).write_text(json.dumps({"created_by": "textft train"}) + "\n")
        with open(path, "a") as f:
            f.writelines(to_line(r) for r in error_records(e, run.state.step if started else None))
    except OSError as err:  # the run already failed; the error is printed whatever happens here
        log.warning("could not record the failure in %s: %s", path, err)


# --- export ----------------------------------------------------------------------------------


def final_evaluation(run: Run) -> tuple[dict, dict]:
    """Metrics and per-example predictions of every evaluation split, with the weights as exported;
    the task's decision settings (multi-label thresholds) are chosen on validation first."""
    reports, predictions, task = {}, {}, run.task
    outputs = {split: run.evaluator.logits(split) for split in run.eval_texts}
    task.choose_decision(*outputs["validation"])
    for split, (logits, labels) in outputs.items():
        reports[split] = task.evaluate(logits, labels, intervals=True)
        predictions[split] = task.prediction_rows(run.eval_texts[split], labels, logits, run.eval_pairs[split])
    return reports, predictions


def write_run(run: Run, reports: dict, predictions: dict, best: dict | None,
              render: Callable[[Path], None] | None = None) -> None:
    """The run directory, swapped in atomically: model and tokenizer (with the training truncation, so
    a plain pipeline truncates the same way), config, reports, predictions, log, and what ``render``
    makes of them (the rendered report)."""
    cfg, state, out_dir, d = run.cfg, run.state, run.out_dir, run.cfg.data
    run.tokenizer.model_max_length = d.max_length
    side = "left" if d.truncation == "tail" else "right"
    run.tokenizer.truncation_side = run.tokenizer.init_kwargs["truncation_side"] = side
    model = run.accelerator.unwrap_model(run.model)
    model.config.update(run.task.model_config())  # with the decision settings chosen on validation
    extra = {"task": run.task.name, "text_pair": d.text_pair_column is not None,
             "label_names": run.data.label_names, "data_source": run.data.source, "parameters": run.params,
             "precision": run.precision, "num_processes": run.accelerator.num_processes,
             "optimizer_steps": state.step, "train_seconds": round(state.seconds, 2), "best": best,
             "stop_reason": state.stop_reason, "resumed_from": str(run.resume) if run.resume else None,
             "config": cfg.to_dict(), "recipe": run.recipe}

    def write(tmp: Path) -> None:
        if lora.is_peft_model(model) and cfg.output.save_adapter is not False:
            lora.write_adapter(model, tmp / lora.ADAPTER_DIR, run.tokenizer,
                               base={"name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision})
            save_config(cfg, tmp / lora.ADAPTER_DIR / "textft_config.yaml", run.recipe)
        save_model(tmp, lora.merge(model), run.tokenizer)
        save_config(cfg, tmp / "textft_config.yaml", run.recipe)
        if d.oos_label is not None:  # through textft.load, which reads the config saved above
            calibrate_out_of_scope(run, tmp, predictions)
        write_reports(tmp, reports, run.task, extra, title=f"textft: {cfg.model.name_or_path} on {run.data.source}")
        write_predictions(tmp / "predictions", predictions)
        if (out_dir / "train_log.jsonl").exists():  # the report's learning curves read it
            shutil.copy2(out_dir / "train_log.jsonl", tmp / "train_log.jsonl")
        if render is not None:
            render(tmp)

    write_atomically(out_dir, write, keep=("checkpoints", "logs", RUN_MARKER))
    shutil.rmtree(run.checkpoints / BEST, ignore_errors=True)  # the exported model; each checkpoint keeps its own
    if run.checkpoints.is_dir() and not any(run.checkpoints.iterdir()):
        run.checkpoints.rmdir()


def calibrate_out_of_scope(run: Run, model_dir: Path, predictions: dict) -> None:
    """With ``data.oos_label``: the out-of-scope score and threshold chosen on validation as ``textft
    calibrate`` does (fitted on the training split, at ``train.oos_target_rejection``), measured on
    every evaluation split and saved with the model in ``model_dir``; each prediction record says
    whether its text was rejected, and the answer given."""
    from textft import calibration
    from textft.classifier import Classifier

    oos, names = run.cfg.data.oos_label, run.data.label_names
    train = run.data.splits["train"]
    clf = Classifier.from_pretrained(model_dir, device=str(run.accelerator.device), out_of_scope=False,
                                     backend="torch")
    batch = run.cfg.train.eval_batch()

    def labelled(split: str) -> tuple[list[str], list[str]]:
        return run.eval_texts[split], [r["label"] for r in predictions[split]]

    settings, statistics = calibration.calibrate(
        clf, *labelled("validation"), target_rejection=run.cfg.train.oos_target_rejection, oos_label=oos,
        batch_size=batch, train=(list(train["text"]), [names[i] if i >= 0 else oos for i in train["labels"]]),
        source="validation split")
    clf = clf.replace(out_of_scope=settings, oos_statistics=statistics)
    settings["evaluations"] = {}
    for split in run.eval_texts:  # validation is measured again for its prediction records
        texts, labels = labelled(split)
        outputs = clf.outputs(texts, batch)
        truth = calibration.class_ids(labels, names)
        if split != "validation":
            settings["evaluations"][split] = calibration.measure_outputs(outputs, truth, settings["threshold"])
        for row, score in zip(predictions[split], outputs.in_scope):
            row["out_of_scope"] = bool(score < settings["threshold"])
            row["pred"] = oos if row["out_of_scope"] else row["pred"]
    settings = calibration.write_settings(model_dir, settings, statistics)
    log.info("out of scope: %s, threshold %.6g (%s); test out-of-scope recall %s", settings["method"],
             settings["threshold"], settings["calibration"]["chosen_because"],
             (settings["evaluations"].get("test") or {}).get("out_of_scope_recall"))


def export(run: Run, render: Callable[[Path], None] | None = None) -> dict:
    """The best weights, evaluated on every split and written as the run directory (with what ``render``
    adds, inside the same atomic swap); returns the reports."""
    accelerator, cfg, state = run.accelerator, run.cfg, run.state
    best = load_best(accelerator, run.model, run.checkpoints)
    run.task.export(accelerator.unwrap_model(run.model))
    if lora.is_peft_model(accelerator.unwrap_model(run.model)):
        # the adapters added into the weights, so the final evaluation scores the model as exported
        accelerator.unwrap_model(run.model).merge_adapter()
    reports, predictions = final_evaluation(run)
    if accelerator.is_main_process:
        write_run(run, reports, predictions, best, render)
        name = f"{cfg.model.name_or_path} on {run.data.source}"
        if len(run.data.label_names) <= 10:  # small enough to read on a terminal
            print(run.task.markdown_report(reports, title=name))
        for line in run.task.summary(reports):
            print(line)
        if best:
            print(f"best {cfg.train.metric_for_best} {best['value']:.4f} at step {best['step']}"
                  f" (epoch {best['epoch']}); stopped: {state.stop_reason}")
        rendered = f"; report: {run.out_dir / 'report.html'}" if render is not None else ""
        print(f"model saved to {run.out_dir} ({state.step} steps in {state.seconds:.0f} s){rendered}")
        if (run.out_dir / lora.ADAPTER_DIR).is_dir():
            print(f"adapter saved to {run.out_dir / lora.ADAPTER_DIR} (peft format, on top of {cfg.model.name_or_path})")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes trackers and, on several processes, the process group
    return reports
