"""textft as a fine-tuning service: ``textft service`` (HTTP API, queue, executors) and ``textft worker``.

Training stays what ``textft train`` does; the service only schedules it. Modules:

- store (a package): the SQLite database (keys, datasets, jobs, events, webhook deliveries), one transaction per
  state change, and every SQL statement of the service
- keys: API keys (salted scrypt hashes) and their verification
- datasets: streamed uploads under a size limit, checked like ``textft train`` checks its data
- upload_bounds: an upload's columns, row width and cells, bounded before a loader reads it
- checks: the pool of checking processes (memory and time limits, keys take turns)
- limits: bounds on what a job or an upload may ask for, per service and per key; storage per key
- containment: memory and time limits of the processes the service starts (cgroup v2 or rlimits)
- jobs: presets, request checks, the job directory (job.yaml = a ``textft train`` config)
- queue: the huey queue (SQLite or Redis) and the executors that run job attempts
- supervise: the per-attempt process that owns a job's process group
- scheduler: the monitor that turns executors' files and training logs into states and events
- models: prediction LRU, model tarballs
- core: the running service (its options and parts), which routes reach through ``app.state``
- routes_*: the FastAPI routes, one module per resource (routes_ops: metrics, deliveries, webhook
  secrets); app: the app around them
- server: the service process; worker: ``textft worker``
- webhooks: signed deliveries of job state changes (address checks, retries, the dispatcher thread)
- metrics: ``/metrics`` (Prometheus); beacons: heartbeats of the processes that run jobs
- estimates: a job's expected time from the jobs already run; backup, backup_cli: backup and restore
- textft_api: every name taken from the rest of textft
"""
