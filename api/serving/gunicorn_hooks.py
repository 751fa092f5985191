"""gunicorn settings module (``-c python:api.serving.gunicorn_hooks``): worker start and exit.

In prometheus_client's multiprocess mode each worker writes its counts to files named after its
pid; when a worker exits, its live gauges (the pool gauges) must stop counting. When a worker
has loaded the app, the app's objects (about 96,000) are moved out of the garbage collector's
reach: a full collection would otherwise walk them all, a pause of 10 ms or more in the event
loop that serves every lookup of the worker's connections.
"""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook: a worker process exited."""
    from crm_service.platform.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Gunicorn hook: the app is loaded in a worker; its objects leave the collector's walks."""
    import gc

    gc.collect()
    gc.freeze()
