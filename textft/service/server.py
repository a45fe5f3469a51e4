"""``textft service``: one process with the HTTP API, the monitor and (by default) the executors.

``serve(opts)`` builds the service (``core.Service``) and its app (``app.create_app``) and runs them
under uvicorn. SIGTERM or Ctrl-C: refuse new jobs and uploads (503), stop the running jobs (SIGTERM to
their process groups; each gets its grace to finish its step), record them as queued to resume at the
next start, then exit. The connections are uvicorn's h11 protocol under the limits of ``http_guard``.
"""

from __future__ import annotations

from textft.service.app import create_app
from textft.service.core import Options, Service
from textft.service.http_guard import guarded_protocol


def serve(opts: Options) -> None:
    import uvicorn

    service = Service(opts)
    app = create_app(service)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.begin_shutdown()
            super().handle_exit(sig, frame)

    protocol = guarded_protocol(opts.header_timeout_s, opts.body_timeout_s, opts.max_connections_per_client)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=opts.log_level, access_log=False,
                            timeout_graceful_shutdown=5, http=protocol,
                            timeout_keep_alive=min(5.0, opts.header_timeout_s))
    Server(config).run()
