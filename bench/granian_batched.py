"""Issue 18 point 4, option (b), as an experiment: the app under granian with a micro-batcher.

``granian --interface wsgi bench.granian_batched:app`` serves the same Flask app, whose lookup
lane (:class:`api.serving.fastpath.LookupLane`) is given a micro-batcher: a request thread that
gets a plain lookup puts its environ on a queue and waits; one batcher thread per process takes
everything queued (waiting at most ``BATCH_WINDOW`` for more), runs the lane's ``prefetch`` (one
statement per kind) and wakes the waiters, which then answer with the card in hand, exactly as
the keep-alive worker's event loop does. Used only by ``bench/api_lookup.py --server
granian-batched``; not shipped.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from api.wsgi import app as _flask_app

BATCH_WINDOW = float(os.environ.get("CRM_BENCH_BATCH_WINDOW", "0.0005"))


class MicroBatcher:
    """Gathers the lookups of concurrent request threads into one prefetch."""

    def __init__(self, lane: Any) -> None:
        self.lane = lane
        self.pending: queue.SimpleQueue[tuple[dict[str, Any], threading.Event]] = \
            queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        with self.lock:
            if self.thread is None:  # after granian's fork
                self.thread = threading.Thread(target=self._run, daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            batch = [self.pending.get()]
            try:
                while True:
                    batch.append(self.pending.get(timeout=BATCH_WINDOW))
            except queue.Empty:
                pass
            try:
                self.lane.prefetch([environ for environ, _ in batch])
            finally:
                for _, done in batch:
                    done.set()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.lane.inline(environ):
            self._start()
            done = threading.Event()
            self.pending.put((environ, done))
            done.wait(5.0)
        return self.lane(environ, start_response)


app = _flask_app
app.wsgi_app = MicroBatcher(_flask_app.wsgi_app)  # type: ignore[method-assign]
