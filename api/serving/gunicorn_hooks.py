"""gunicorn settings module (``-c python:api.serving.gunicorn_hooks``): metrics of exited workers.

In prometheus_client's multiprocess mode each worker writes its counts to files named after its
pid; when a worker exits, its live gauges (the pool gauges) must stop counting.
"""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """Gunicorn hook: a worker process exited."""
    from crm_service.platform.metrics import mark_process_dead

    mark_process_dead(worker.pid)
