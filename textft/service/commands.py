"""Command lines: ``textft service [...]``, ``textft service keys create|list|revoke``, ``textft worker``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from textft.service.env_options import EnvParser, label, yes_no
from textft.service.textft_api import UserError

ENV_DATA_DIR = "TEXTFT_DATA_DIR"


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=os.environ.get(ENV_DATA_DIR),
                        help=f"the service's state: database, uploads, jobs (default: ${ENV_DATA_DIR})")


def _need_data_dir(args) -> Path:
    if not args.data_dir:
        raise UserError(f"'--data-dir' is required (or set {ENV_DATA_DIR})")
    return Path(args.data_dir)


def _gpus(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [] if value.strip().lower() in ("", "none", "cpu") else [v.strip() for v in value.split(",") if v.strip()]


LIMIT_ARGS = (
    ("--max-steps", int, "max_steps", 1, "optimizer steps of one job (default 1,000,000; per key: keys create)"),
    ("--max-epochs", float, "max_epochs", 1, "passes over the data of one job (default 1,000)"),
    ("--max-batch-size", int, "max_batch_size", 1, "train.batch_size, eval_batch_size, grad_accum_steps (default 1,024)"),
    ("--max-evaluations", int, "max_evaluations", 1, "validation passes of one job (default 1,000)"),
    ("--max-log-entries", int, "max_log_entries", 1, "training-log lines of one job (default 100,000)"),
    ("--max-keep-checkpoints", int, "max_keep_checkpoints", 1, "train.keep_checkpoints (default 5)"),
    ("--job-hours", float, "job_seconds", 3600, "wall-clock time of one job, attempts together (default 24;"
                                                " per key: keys create --max-job-hours)"),
    ("--job-memory-gb", float, "job_memory_bytes", 1e9, "memory of one job's processes together (default: 60%% of"
                                                        " the machine's, shared by the jobs run at once)"),
    ("--max-storage-gb", float, "max_storage_bytes", 1e9, "datasets and job models one key stores (default: a"
                                                          " quarter of the data directory's disk; per key: keys create)"),
    ("--max-upload-columns", int, "upload_columns", 1, "columns of an uploaded file (default 1,000)"),
    ("--max-upload-row-mb", float, "upload_row_bytes", 1e6, "bytes of one row of an uploaded file (default 1)"),
    ("--max-upload-cells", int, "upload_cells", 1, "rows x columns of an uploaded file (default 50,000,000)"),
)
"""Options of the limits of textft.service.limits.Limits: (flag, type, field, unit, help); a 422 names the limit."""


def _limit_options(parser: EnvParser) -> None:
    for flag, kind, _, _, text in LIMIT_ARGS:
        parser.option(flag, type=kind, help=text)
    parser.option("--check-workers", type=int, default=2,
                  help="processes that check uploads; each key has one at a time (default 2)")
    parser.option("--check-memory-gb", type=float, help="memory of one upload check (default: 15%% of the machine's,"
                                                        " at most 4)")
    parser.option("--check-seconds", type=float, default=300.0, help="time of one upload check (default 300)")
    parser.option("--max-retries", type=int, default=3,
                  help="times a killed job (its executor or process killed) runs again before it fails (default 3)")


def _ops_options(parser: EnvParser) -> None:
    parser.option("--metrics-port", type=int, help="serve GET /metrics without a key on this port too (the API"
                                                    " port's /metrics needs an admin key)")
    parser.option("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default loopback: bind"
                                                               " it only where Prometheus, not users, reaches)")
    parser.option("--allow-private-webhooks", type=yes_no, nargs="?", const=True, default=False, metavar="yes|no",
                  help="let jobs send webhooks to loopback and private addresses (default: public addresses only)")
    parser.option("--webhook-timeout", type=float, default=10.0, help="seconds a webhook receiver gets to answer")
    parser.option("--webhook-attempts", type=int, default=8,
                  help="attempts of a webhook delivery (waits double from 1 s between them) before it is given up")


def _limits_of(args) -> dict:
    """The limits given on the command line or in the environment, in Limits' units (bytes, seconds)."""
    out = {}
    for flag, kind, name, unit, _ in LIMIT_ARGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            out[name] = value * unit if name == "job_seconds" else kind(value) if unit == 1 else int(value * unit)
    return out


def _service_problems(args, sources: dict[str, str]) -> list[str]:
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append(f"{label('port', sources)} must be in 0..65535, got {args.port}")
    if args.metrics_port is not None and not 0 < args.metrics_port <= 65535:
        problems.append(f"{label('metrics_port', sources)} must be in 1..65535, got {args.metrics_port}")
    for name in ("max_upload_mb", "max_loaded_models", "max_loaded_adapters", "predict_threads", "webhook_timeout",
                 "webhook_attempts", "header_timeout", "body_timeout"):
        if getattr(args, name) <= 0:
            problems.append(f"{label(name, sources)} must be > 0, got {getattr(args, name)}")
    for dest in [flag[2:].replace("-", "_") for flag, *_ in LIMIT_ARGS] + ["check_workers", "check_seconds",
                                                                          "check_memory_gb"]:
        value = getattr(args, dest)
        if value is not None and value <= 0:
            problems.append(f"{label(dest, sources)} must be > 0, got {value}")
    for name in ("workers", "max_queued", "save_every_steps", "grace", "max_retries", "max_auth_failures",
                 "max_connections_per_client"):
        value = getattr(args, name)
        if value is not None and value < 0:
            problems.append(f"{label(name, sources)} must be >= 0, got {value}")
    for name in ("configs", "local_models"):
        for path in getattr(args, name):
            if not Path(path).is_dir():
                problems.append(f"{label(name, sources)}: directory '{path}' does not exist")
    return problems


def _client_limits(parser: EnvParser) -> None:
    """What one client (address) may hold or try: a shared service meets careless and hostile ones."""
    parser.option("--max-auth-failures", type=int, default=20,
                  help="failed key checks a client address may make a minute before it is refused (0: no limit)")
    parser.option("--header-timeout", type=float, default=10.0,
                  help="seconds a client has to send a request's headers; also how long an idle connection stays open")
    parser.option("--body-timeout", type=float, default=30.0,
                  help="longest pause, in seconds, while a client sends a request's body")
    parser.option("--max-connections-per-client", type=int, default=32,
                  help="open connections one client address may hold at once (0: no cap)")
    parser.add_argument("--adopt-orphans", action="store_true",
                        help="start although the database is missing or empty while the data directory holds"
                             " datasets and jobs: a new database, and those directories kept aside in quarantine/")


def _client_options(args) -> dict:
    return {"adopt_orphans": args.adopt_orphans, "max_auth_failures": args.max_auth_failures,
            "header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout,
            "max_connections_per_client": args.max_connections_per_client}


def service_main(argv: list[str]) -> int:
    if argv and argv[0] == "keys":
        return keys_main(argv[1:])
    if argv and argv[0] in ("backup", "restore"):
        from textft.service.backup_cli import backup_main, restore_main

        return (backup_main if argv[0] == "backup" else restore_main)(argv[1:])
    parser = EnvParser(
        prog="textft service", description="Fine-tuning as a service: an HTTP API (/v1, OpenAPI at /openapi.json)"
        " with API keys, a persistent job queue and executors. Keys: textft service keys --help.")
    parser.option("--data-dir", required=True, help="the service's state: database, uploads, jobs")
    parser.option("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.option("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.option("--workers", type=int, help="jobs this process runs at once (default: one per GPU, else 1;"
                                              " 0: leave every job to textft worker processes)")
    parser.option("--broker", help="redis://[:PASSWORD@]HOST:PORT/DB: share the queue with textft worker processes"
                                   " (default: an SQLite queue in the data directory)")
    parser.option("--gpus", help="GPU ids jobs may use, e.g. 0,1 (default: all visible; 'none': CPU only)")
    parser.option("--configs", action="append", default=[], many=True, metavar="DIR",
                  help="the team's own presets (NAME.yaml, accelerate/NAME.yaml) on top of the packaged ones"
                       " (textft configs list); a preset of the same name replaces the packaged one;"
                       " may be given more than once")
    parser.option("--local-models", nargs="*", default=[], many=True, metavar="DIR",
                  help="directories whose models jobs may name as model.name_or_path")
    parser.option("--save-every-steps", type=int, default=100,
                  help="checkpoint cadence of jobs that do not set train.save_every_steps (0: none;"
                       " interrupted jobs resume from their latest checkpoint)")
    parser.option("--max-upload-mb", type=float, default=200, help="default per-key upload limit")
    parser.option("--max-queued", type=int, default=10, help="default per-key limit of queued jobs")
    parser.option("--max-loaded-models", type=int, default=2, help="full models and shared LoRA bases kept in memory")
    parser.option("--max-loaded-adapters", type=int, default=64, help="LoRA models kept on the loaded bases")
    parser.option("--predict-device", default="cpu", help="device for predictions (cpu, cuda, cuda:1)")
    parser.option("--predict-threads", type=int, default=1, help="CPU threads for predictions")
    parser.option("--grace", type=float, default=60.0, help="seconds a stopped or cancelled job gets before SIGKILL")
    parser.option("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                  help="how much the service logs")
    _limit_options(parser)
    _ops_options(parser)
    _client_limits(parser)
    args, _ = parser.parse(argv, _service_problems)
    data_dir = Path(args.data_dir)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401

        from textft.service import queue  # noqa: F401 (the queue's own dependencies)
    except ImportError as e:
        raise UserError(f"textft service needs the service extra ({e.name} is missing): pip install 'textft[service]'") \
            from None
    from textft.service.core import Options
    from textft.service.server import serve
    from textft.service.webhooks import WebhookSettings

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("textft.service").setLevel(getattr(logging, args.log_level.upper()))
    opts = Options(data_dir=data_dir, host=args.host, port=args.port, workers=args.workers, broker=args.broker,
                   configs_dirs=tuple(Path(p) for p in args.configs),
                   local_models=tuple(Path(p).resolve() for p in args.local_models),
                   save_every_steps=args.save_every_steps, max_upload_bytes=int(args.max_upload_mb * 1e6),
                   max_queued=args.max_queued, max_loaded_models=args.max_loaded_models, max_loaded_adapters=args.max_loaded_adapters,
                   predict_device=args.predict_device, predict_threads=args.predict_threads, grace_s=args.grace,
                   gpus=_gpus(args.gpus), log_level=args.log_level, limits=_limits_of(args),
                   check_workers=args.check_workers, check_seconds=args.check_seconds,
                   check_memory_bytes=None if args.check_memory_gb is None else int(args.check_memory_gb * 1e9),
                   max_retries=args.max_retries, metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                   webhooks=WebhookSettings(allow_private=args.allow_private_webhooks, timeout_s=args.webhook_timeout,
                                            max_attempts=args.webhook_attempts), **_client_options(args))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: use TLS (a reverse proxy) so that keys do not cross the"
              " network in clear", file=sys.stderr)
    serve(opts)
    return 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def keys_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="textft service keys", description="Manage the service's API keys.")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it (the only time it is shown)")
    _data_dir(create)
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument("--admin", action="store_true", help="sees and manages every key's datasets, jobs, models")
    create.add_argument("--max-queued", type=int, help="queued jobs allowed (default: the service's --max-queued)")
    create.add_argument("--max-upload-mb", type=float, help="largest upload (default: the service's --max-upload-mb)")
    create.add_argument("--max-storage-mb", type=float, help="datasets and job models stored (default: the service's"
                                                             " --max-storage-gb)")
    create.add_argument("--max-steps", type=int, help="optimizer steps of one job (default: the service's --max-steps)")
    create.add_argument("--max-job-hours", type=float, help="wall-clock time of one job (default: the service's"
                                                            " --job-hours)")
    create.add_argument("--hub-namespace", action="append", default=[], metavar="ORG",
                        help="a Hub user or organization the key may push into with the service's token (repeat for"
                             " more; without it, a push needs the key holder's own token)")
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    _data_dir(listing)
    listing.add_argument("--json", action="store_true")
    secret = sub.add_parser("webhook-secret", help="give a key a new webhook secret and print it (the only time it"
                                                   " is shown); the old one stops signing at once")
    _data_dir(secret)
    secret.add_argument("key", help="key id or name")
    revoke = sub.add_parser("revoke", help="revoke a key at once (by id or name)")
    _data_dir(revoke)
    revoke.add_argument("key", help="key id or name")
    args = parser.parse_args(argv)
    data_dir = _need_data_dir(args)
    from textft.service.keys import LIMIT_FLAGS, create_key, list_keys, revoke_key, rotate_webhook_secret
    from textft.service.layout import DataDir, private_files
    from textft.service.safekeeping import open_store

    private_files()
    data = DataDir(data_dir).create()
    store = open_store(data, how_to_start="run textft service once with")
    if args.action == "create":
        given = {limit: getattr(args, flag[2:].replace("-", "_")) for limit, (flag, _) in LIMIT_FLAGS.items()}
        key, record = create_key(store, args.name, args.admin, args.hub_namespace, **{
            limit: None if value is None else value * LIMIT_FLAGS[limit][1] if limit == "max_job_seconds"
            else round(value * LIMIT_FLAGS[limit][1]) for limit, value in given.items()})
        print(key)
        print(f"created {'admin ' if record['admin'] else ''}key '{record['name']}' (id {record['id']});"
              " it is shown only this once", file=sys.stderr)
        print(f"webhook secret (signs this key's webhooks; shown only this once): {record['webhook_secret']}",
              file=sys.stderr)
    elif args.action == "list":
        keys = list_keys(store)
        if args.json:
            print(json.dumps(keys, indent=2))
        else:
            print(f"{'id':<14}{'name':<20}{'admin':<7}{'created':<18}{'revoked':<18}limits")
            for k in keys:
                limits = ", ".join(f"{flag[6:]} {k[limit] / unit:g}" for limit, (flag, unit) in LIMIT_FLAGS.items()
                                   if k[limit] is not None) or "service defaults"
                hub = f"; pushes into {', '.join(k['hub_namespaces'])}" if k["hub_namespaces"] else ""
                print(f"{k['id']:<14}{k['name']:<20}{'yes' if k['admin'] else 'no':<7}{_when(k['created_at']):<18}"
                      f"{_when(k['revoked_at']):<18}{limits}{hub}")
    elif args.action == "webhook-secret":
        record, secret = rotate_webhook_secret(store, args.key)
        print(secret)
        print(f"new webhook secret of key '{record['name']}' (id {record['id']}); it is shown only this once",
              file=sys.stderr)
    else:
        record = revoke_key(store, args.key)
        print(f"revoked key '{record['name']}' (id {record['id']})")
    return 0


def worker_main(argv: list[str]) -> int:
    parser = EnvParser(
        prog="textft worker", description="Run jobs of a textft service from its Redis queue, on this machine."
        " The data directory is shared with the service (e.g. over NFS).")
    parser.option("--data-dir", required=True, help="the service's data directory, as this machine sees it")
    parser.option("--broker", required=True, help="the service's --broker, e.g. redis://:PASSWORD@queue-host:6379/0")
    parser.option("--workers", type=int, help="jobs run at once (default: one per GPU, else 1)")
    parser.option("--gpus", help="GPU ids jobs may use, e.g. 0,1 (default: all visible; 'none': CPU only)")
    parser.option("--grace", type=float, default=60.0, help="seconds a stopped job gets before SIGKILL")
    parser.option("--job-memory-gb", type=float, help="memory of one job's processes together (default: 60%% of"
                                                      " this machine's, shared by the jobs run at once)")
    args, sources = parser.parse(argv)
    if args.job_memory_gb is not None and args.job_memory_gb <= 0:
        raise UserError(f"{label('job_memory_gb', sources)} must be > 0, got {args.job_memory_gb}")
    from textft.service.layout import private_files
    from textft.service.worker import run_worker

    private_files()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return run_worker(args.data_dir, args.broker, args.workers, _gpus(args.gpus), args.grace,
                      None if args.job_memory_gb is None else int(args.job_memory_gb * 1e9))
