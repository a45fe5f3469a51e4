"""The records of train_log.jsonl: written from the plan and the loop's decisions, read back as data by
every reader, old logs read as they are, newer ones refused rather than misread."""

import json

import pytest

from textft import run_events
from textft.config import load_config
from textft.errors import Problem, UserError
from textft.interrupts import Interrupted
from textft.recipe import Plan
from textft.run_events import (BestRecord, EndRecord, ErrorRecord, EvalRecord, NewerSchema, TrainRecord,
                               error_records, parse, read, summarize, to_dict, to_line)


def test_records_round_trip_through_json_lines_with_their_kind_first():
    records = [Plan(total_steps=40, steps_per_epoch=13, eval_every_steps=4, metric="loss", patience=2,
                    min_delta=0.01).record(global_batch=32, task="regression", step=12),
               TrainRecord(13, 1.0, 0.5, 2e-5, 100.0, 3000.0), EvalRecord(13, 1.0, {"loss": 0.4, "rmse": 0.6}),
               BestRecord(13, 1.0, "loss", 0.4, True), EndRecord(40, 3.08, "completed", 12.5, 13),
               ErrorRecord("not_found", "'data.train_file': file 'x.csv' does not exist", "data.train_file")]
    lines = [to_line(r) for r in records]
    assert [list(json.loads(line))[0] for line in lines] == ["event"] * len(records)
    assert read(lines) == records
    plan = json.loads(lines[0])
    assert plan["schema"] == run_events.SCHEMA and plan["lower_is_better"] is True and plan["step"] == 12
    assert (plan["total_steps"], plan["steps_per_epoch"], plan["global_batch"], plan["task"], plan["metric"],
            plan["eval_every_steps"]) == (40, 13, 32, "regression", "loss", 4)


def test_logs_from_before_the_schema_read_as_train_and_eval_records():
    old = ['{"step": 5, "epoch": 0.25, "loss": 0.9, "samples_per_s": 10.0, "tokens_per_s": 300.0, "lr": 1e-4}',
           '{"step": 20, "epoch": 1.0, "eval": {"accuracy": 0.8, "macro_f1": 0.75}}', '{"step": 2', "[1, 2]"]
    assert read(old) == [TrainRecord(5, 0.25, 0.9, 1e-4, 10.0, 300.0), EvalRecord(20, 1.0, {"accuracy": 0.8,
                                                                                            "macro_f1": 0.75})]
    summary = summarize(read(old))
    assert summary.plan is None and summary.best is None and summary.errors == []


def test_unknown_kinds_are_skipped_and_a_newer_schema_is_refused():
    assert parse({"event": "gpu_memory", "step": 3, "bytes": 10}) is None  # a kind added later
    assert parse({"event": "best", "step": 3}) is None  # a record missing its fields
    assert parse({**to_dict(BestRecord(3, 0.1, "f1", 0.5, False)), "note": "a field added later"}) == \
        BestRecord(3, 0.1, "f1", 0.5, False)
    newer = {**to_dict(Plan(total_steps=4, steps_per_epoch=2).record(16, "single_label")), "schema": run_events.SCHEMA + 1}
    with pytest.raises(NewerSchema, match=f"schema {run_events.SCHEMA + 1}; this textft reads schema"):
        read([json.dumps(newer)])


def test_a_failure_becomes_one_error_record_per_problem_with_its_field_and_kind():
    e = UserError([Problem("'train.lr' must be > 0, got -1", "train.lr"),
                   Problem("'data.train_file': file 'x.csv' does not exist", "data.train_file", "not_found")])
    assert error_records(e, step=None) == [ErrorRecord("invalid", "'train.lr' must be > 0, got -1", "train.lr"),
                                           ErrorRecord("not_found", "'data.train_file': file 'x.csv' does not exist",
                                                       "data.train_file")]
    assert error_records(UserError("no training data"))[0] == ErrorRecord("invalid", "no training data")
    (stopped,) = error_records(Interrupted(15, 7), step=7)
    assert stopped.kind == "interrupted" and stopped.message.startswith("stopped by SIGTERM after step 7")
    (crash,) = error_records(MemoryError("CUDA out of memory"), step=3)
    assert crash == ErrorRecord("internal", "MemoryError: CUDA out of memory", None, 3)


def test_a_failed_setup_is_recorded_only_where_the_caller_asked(tiny_args, tmp_path):
    from textft.train import train

    missing = [a if not a.startswith("data.train_file=") else f"data.train_file={tmp_path / 'nope.jsonl'}"
               for a in tiny_args]
    out = tmp_path / "run"
    with pytest.raises(UserError):
        train(load_config(None, missing))
    assert not out.exists()  # a user's run: nothing written before training starts
    with pytest.raises(UserError):
        train(load_config(None, [*missing, "output.log_errors=true"]))
    (error,) = read((out / "train_log.jsonl").read_text().splitlines())
    assert error.kind == "not_found" and error.field == "data.train_file" and error.step is None
    assert "does not exist" in error.message


def test_the_report_reads_the_loops_best_and_refuses_a_newer_log_with_a_warning(tmp_path):
    from run_dirs import write_run

    from textft.report_data import build_report

    run = tmp_path / "run"
    write_run(run)
    evaluation = json.loads((run / "eval_report.json").read_text())
    evaluation.pop("best", None)  # e.g. `textft evaluate --output`: the log is the only source
    (run / "eval_report.json").write_text(json.dumps(evaluation))
    legacy = (run / "train_log.jsonl").read_text()
    plan = Plan(total_steps=60, steps_per_epoch=20, metric="macro_f1").record(16, "single_label")
    # the loop kept the step-20 weights: a later, higher score within min_delta is not the best
    (run / "train_log.jsonl").write_text(to_line(plan) + legacy + to_line(BestRecord(20, 1.0, "macro_f1", 0.5, False)))
    report = build_report(run)
    assert report["best"] == {"step": 20, "epoch": 1.0, "metric": "macro_f1", "value": 0.5, "source": "train_log.jsonl"}
    # (the 120-example test split's wide interval is warned about; nothing about the log is)
    assert len(report["history"]["eval"]) == 3
    assert not any("newer" in w or "schema" in w or "train_log" in w for w in report["warnings"])
    newer = {**to_dict(plan), "schema": run_events.SCHEMA + 1}
    (run / "train_log.jsonl").write_text(json.dumps(newer) + "\n" + legacy)
    report = build_report(run)
    assert report["history"] == {"train": [], "eval": []} and report["best"] is None
    assert any("newer" in w or "schema" in w for w in report["warnings"])
