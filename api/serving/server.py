"""gunicorn worker classes whose own error answers are problem+json too.

gunicorn answers requests it cannot parse (request line over the limit, too many or too large
headers, a malformed request line) before the app sees them, with an HTML page, and logs the
raw request line for errors, which may hold customer ids or emails. These workers answer such
requests with RFC 9457 ``application/problem+json`` like the rest of the API and log only the
kind of problem.

Use ``--worker-class api.serving.server.ProblemSyncWorker`` (or ``ProblemThreadWorker`` with
``--threads`` above 1); ``crm-service serve`` and the Dockerfile do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from api.serving import gunicorn_adapter as gu
from api.serving.fastpath import CARD, BatchingLane

log = logging.getLogger("crm.request")

_STATUS: list[tuple[type[BaseException], int, str, str]] = [
    (gu.LimitRequestLine, 414, "URI Too Long", "request-line-too-long"),
    (gu.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers-too-large"),
    (gu.ParseException, 400, "Bad Request", "malformed-request"),
]


def problem_bytes(status: int, reason: str, slug: str | None, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with a problem+json body; the connection is closed."""
    body = json.dumps({
        "type": f"https://crm-service.dev/problems/{slug}" if slug else "about:blank",
        "title": reason, "status": status, "detail": detail,
    }).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def classify(exc: BaseException) -> tuple[int, str, str | None, str]:
    """Status, reason, problem slug and a detail without request data, for ``exc``."""
    for kind, status, reason, slug in _STATUS:
        if isinstance(exc, kind):
            if status == 414:
                return status, reason, slug, "the request line (URL) is longer than the limit"
            if status == 431:
                return status, reason, slug, "too many request headers, or one too large"
            return status, reason, slug, "the request could not be parsed as HTTP"
    return 500, "Internal Server Error", None, "an unexpected error occurred"


class _ProblemErrors:
    """Mixin replacing gunicorn's ``handle_error``."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, reason, slug, detail = classify(exc)
        # The exception's class only: its text and the request line may hold personal data.
        if status >= 500:
            log.error("request failed before the app answered: %s", type(exc).__name__)
        else:
            log.info("request refused by the HTTP parser: %s (%d)", type(exc).__name__, status)
        try:
            gu.write_nonblock(client, problem_bytes(status, reason, slug, detail))
        except Exception:  # noqa: BLE001 - the client may be gone; nothing left to do
            log.debug("could not send the error answer")


class ProblemSyncWorker(_ProblemErrors, gu.BlockingWorker):
    """gunicorn's sync worker with problem+json parser errors."""


class ProblemThreadWorker(_ProblemErrors, gu.GthreadWorker):
    """gunicorn's gthread worker with problem+json parser errors."""


_ACCEPT, _WAKE, _SIGNAL = object(), object(), object()
READ_TIMEOUT_SECONDS = 30.0  # a client that stops sending or reading (threads only)
HEAD_TIMEOUT_SECONDS = 10.0  # to send a whole request head, once it has begun
BODY_DRAIN_SECONDS = 5.0  # reading what the app left of a request body, before keep-alive
MAX_HEAD = 65536  # bytes peeked for a complete request head


# A request read off a connection: gunicorn's request, its response (None until made, for a
# request expecting "100 Continue") and its WSGI environ.
_Parsed = tuple[Any, Any, dict[str, Any]]


def _head_ends(data: bytes) -> bool:
    """Whether ``data`` holds the end of a request head.

    A blank line; with bare LF too, which the parser then judges.
    """
    return b"\r\n\r\n" in data or b"\n\n" in data


class _Conn:
    """One client connection.

    Its socket, its HTTP parser (which keeps read-ahead bytes) and when it may be closed for
    idleness.
    """

    __slots__ = ("sock", "addr", "server", "parser", "deadline", "head_by", "watched")

    def __init__(self, sock: socket.socket, addr: Any, server: Any, cfg: Any) -> None:
        self.sock, self.addr, self.server = sock, addr, server
        self.parser = gu.new_parser(cfg, sock, addr)
        self.deadline = 0.0
        self.head_by = 0.0  # when a begun request head must be complete (0: none begun)
        self.watched = False

    def buffered(self) -> bool:
        """Whether the parser already holds bytes of a next request."""
        return bool(gu.buffered(self.parser))

    def fill(self) -> bool | None:
        """Read what the client has sent, without waiting, into the parser's buffer.

        True when a whole request head is buffered (or more than :data:`MAX_HEAD` bytes, which
        the parser will refuse), False while it is still arriving, None if the client closed.
        """
        data = gu.buffered(self.parser)
        while not _head_ends(data) and len(data) <= MAX_HEAD:
            try:
                chunk = self.sock.recv(MAX_HEAD, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return None
            if not chunk:
                return None
            gu.append(self.parser, chunk)
            data += chunk
        return True


class _Gather:
    """Stands in for a client socket while an inline answer is written.

    gunicorn writes the head and the body separately, and two sends wake the client twice. The
    loop sends what was gathered in one call.
    """

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(bytes(data))


class ProblemKeepAliveWorker(_ProblemErrors, gu.Worker):
    """Keep-alive connections on one event loop; cheap lookups answered inline and batched.

    gunicorn's sync worker closes the connection after every answer and serves one request at
    a time; its gthread worker keeps connections alive but hands every request to a thread,
    and the handover and GIL contention cost more than the cheap requests themselves. This
    worker:

    - keeps HTTP/1.1 connections alive (``--keep-alive`` seconds idle) in a selector;
    - reads request heads on the event loop without ever waiting for a client: bytes are taken
      as they come until the head is complete (within :data:`HEAD_TIMEOUT_SECONDS`);
    - runs the lookups the app marks as inline (``app.wsgi_app.inline(environ)``: the lookups
      of :class:`api.serving.fastpath.LookupLane`, ``/tier`` and the profile, with a recently
      verified key) on the loop: ``app.wsgi_app.prefetch(environs)`` fetches all that arrived
      together in one statement per kind, on a pool with short timeouts, and each request with its
      answer in hand is answered at once, sent without blocking;
    - hands every other request (lists, exports, ingestion, the console, and lookups the batch
      could not answer) to a pool of ``--threads`` threads, so a long export or a slow
      database does not hold up the loop; a thread also finishes sending to a client that
      reads slowly;
    - answers unparseable requests with problem+json like the other workers here.

    Request bodies are read in the threads, with :data:`READ_TIMEOUT_SECONDS` per read; as with
    any gunicorn worker, put a buffering proxy in front when clients may be slow on purpose.
    """

    alive: bool  # gunicorn's base worker sets it

    def init_process(self) -> None:
        """Set up the selector, thread pool and wake-up pipe, then run (gunicorn's base).

        First checks that the installed gunicorn has every internal this worker uses
        (:func:`api.serving.gunicorn_adapter.check`): the worker refuses to start otherwise.
        """
        gu.check()
        if self.cfg.is_ssl:
            raise RuntimeError("ProblemKeepAliveWorker does not terminate TLS: put a TLS proxy "
                               "in front (or use api.serving.server.ProblemThreadWorker)")
        self.selector = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(max(1, self.cfg.threads), thread_name_prefix="crm-http")
        self.finished: queue.SimpleQueue[tuple[_Conn, bool]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.conns: dict[int, _Conn] = {}
        self.accepting = False
        self.accept_paused = False  # out of file descriptors: until the next sweep
        self.counting = threading.Lock()  # self.nr, counted by the loop and the threads
        super().init_process()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until told to stop, then finish what threads hold and close the rest."""
        lane = getattr(self.wsgi, "wsgi_app", None)  # Flask's middleware slot
        self.lane: BatchingLane | None = lane if isinstance(lane, BatchingLane) else None
        for listener in self.sockets:
            listener.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, _WAKE)
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, _SIGNAL)
        self._accept_enabled(True)
        ready: list[_Conn] = []
        swept = time.monotonic()
        while self.alive:
            self.notify()
            events = self.selector.select(0 if ready else 1.0)
            batch: dict[int, _Conn] = {id(c): c for c in ready}
            ready = []
            for key, _ in events:
                if key.data is _ACCEPT:
                    self._accept(key.fileobj)
                elif key.data is _WAKE:
                    ready.extend(self._back_from_threads())
                elif key.data is _SIGNAL:
                    self._drain(self.PIPE[0])
                else:
                    batch[id(key.data)] = key.data
            if batch:
                ready.extend(self._serve(list(batch.values())))
            self._accept_enabled(len(self.conns) < self.cfg.worker_connections
                                 and not self.accept_paused)
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            now = time.monotonic()
            if now - swept >= 1.0:
                swept = now
                for conn in [c for c in self.conns.values() if c.watched and (
                        c.deadline < now or 0 < c.head_by < now)]:
                    self._close(conn)
                self.accept_paused = False
        self._accept_enabled(False)
        self.pool.shutdown(wait=True)
        self._back_from_threads()
        for conn in list(self.conns.values()):
            self._close(conn)

    def _accept_enabled(self, enabled: bool) -> None:
        if enabled == self.accepting:
            return
        for listener in self.sockets:
            if enabled:
                self.selector.register(listener, selectors.EVENT_READ, _ACCEPT)
            else:
                self.selector.unregister(listener)
        self.accepting = enabled

    def _accept(self, listener: Any) -> None:
        for _ in range(16):
            if len(self.conns) >= self.cfg.worker_connections:
                return
            try:
                client, addr = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.warning("cannot accept connections (%s); pausing for a second",
                                     errno.errorcode.get(exc.errno, exc.errno))
                    self.accept_paused = True
                    return
                raise
            client.setblocking(True)
            gu.close_on_exec(client)
            conn = _Conn(client, addr, listener.getsockname(), self.cfg)
            self.conns[client.fileno()] = conn
            self._watch(conn)

    def _watch(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + max(self.cfg.keepalive, 1)
        if not conn.watched:
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.watched = True

    def _unwatch(self, conn: _Conn) -> None:
        if conn.watched:
            self.selector.unregister(conn.sock)
            conn.watched = False

    def _close(self, conn: _Conn) -> None:
        self._unwatch(conn)
        self.conns.pop(conn.sock.fileno(), None)
        gu.close(conn.sock)

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass

    # -- requests ---------------------------------------------------------------------------

    def _serve(self, conns: list[_Conn]) -> list[_Conn]:
        """Serve one request of each ready connection; return those with more buffered.

        Nothing here waits on a client: heads are read without blocking until complete, and
        answers are sent without blocking (a client that does not read gets the rest from a
        thread). Requests that may need the database beyond the lane's batch go to threads.
        """
        inline: list[tuple[_Conn, Any, Any, dict[str, Any]]] = []
        for conn in conns:
            complete = conn.fill()
            if complete is None:
                self._close(conn)
                continue
            if not complete:  # still arriving: wait on the loop, within HEAD_TIMEOUT_SECONDS
                if not conn.head_by:
                    conn.head_by = time.monotonic() + HEAD_TIMEOUT_SECONDS
                    conn.deadline = max(conn.deadline, conn.head_by)
                continue
            conn.head_by = 0.0
            if not _head_ends(gu.buffered(conn.parser)):  # over MAX_HEAD bytes
                self.handle_error(None, conn.sock, conn.addr, gu.LimitRequestHeaders(
                    f"request head over {MAX_HEAD} bytes"))
                self._close(conn)
                continue
            try:
                req = next(conn.parser)
                if gu.expects_continue(req):  # gunicorn answers "100 Continue" blocking
                    self._to_thread(conn, (req, None, {}))
                    continue
                resp, environ = gu.create(req, conn.sock, conn.addr, conn.server, self.cfg)
            except (StopIteration, gu.NoMoreData, OSError):
                self._close(conn)
                continue
            except Exception as exc:  # noqa: BLE001 - an unparseable request: problem+json
                self.handle_error(None, conn.sock, conn.addr, exc)
                self._close(conn)
                continue
            environ["wsgi.multithread"] = True
            if self.lane is not None and environ.get("CONTENT_LENGTH") in (None, "", "0") \
                    and "HTTP_TRANSFER_ENCODING" not in environ and self.lane.inline(environ):
                inline.append((conn, req, resp, environ))
            else:
                self._to_thread(conn, (req, resp, environ))
        if inline and self.lane is not None:
            self.lane.prefetch([item[3] for item in inline])
        more: list[_Conn] = []
        for conn, req, resp, environ in inline:
            if not environ.get(CARD):  # no answer from the batch: the app needs a thread
                self._to_thread(conn, (req, resp, environ))
                continue
            gather = _Gather()
            gu.redirect(resp, gather)
            keep = self._respond(conn, req, resp, environ, self.lane and self.lane.answer)
            if keep is None:  # the lane declined (e.g. 429): Flask answers, in a thread
                gu.redirect(resp, conn.sock)
                self._to_thread(conn, (req, resp, environ))
                continue
            out = b"".join(gather.parts)
            try:
                sent = conn.sock.send(out, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                continue
            if sent < len(out):  # the client is not reading: a thread waits for it
                self._unwatch(conn)
                self.pool.submit(self._send_rest, conn, out[sent:], keep)
            elif keep:
                self._watch(conn)
                if conn.buffered():
                    more.append(conn)
            else:
                self._close(conn)
        return more

    def _to_thread(self, conn: _Conn, parsed: _Parsed) -> None:
        self._unwatch(conn)
        self.pool.submit(self._threaded, conn, parsed)

    def _threaded(self, conn: _Conn, parsed: _Parsed) -> None:
        """In a pool thread: answer the request, then hand the connection back to the loop.

        A response not made yet is made here: that sends "100 Continue" when asked.
        """
        keep = False
        req, resp, environ = parsed
        try:
            conn.sock.settimeout(READ_TIMEOUT_SECONDS)
            if resp is None:
                resp, environ = gu.create(req, conn.sock, conn.addr, conn.server, self.cfg)
                environ["wsgi.multithread"] = True
            keep = bool(self._respond(conn, req, resp, environ))
        except (gu.NoMoreData, OSError):
            keep = False
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed header: problem+json
            self.handle_error(req, conn.sock, conn.addr, exc)
            keep = False
        finally:
            self._hand_back(conn, keep)

    def _send_rest(self, conn: _Conn, data: bytes, keep: bool) -> None:
        """In a pool thread: finish sending an answer the client was slow to take."""
        try:
            conn.sock.settimeout(READ_TIMEOUT_SECONDS)
            conn.sock.sendall(data)
        except OSError:
            keep = False
        self._hand_back(conn, keep)

    def _hand_back(self, conn: _Conn, keep: bool) -> None:
        self.finished.put((conn, keep))
        try:
            os.write(self.wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: the loop is awake anyway

    def _back_from_threads(self) -> list[_Conn]:
        """Take back the connections threads are done with; return those with more buffered."""
        self._drain(self.wake_r)
        more: list[_Conn] = []
        while True:
            try:
                conn, keep = self.finished.get_nowait()
            except queue.Empty:
                return more
            if keep and self.alive:
                conn.sock.settimeout(None)
                self._watch(conn)
                if conn.buffered():
                    more.append(conn)
            else:
                self._close(conn)

    def _respond(self, conn: _Conn, req: Any, resp: Any, environ: dict[str, Any],
                 app: Any = None) -> bool | None:
        """Run ``app`` (the WSGI app) for one request; True if the connection stays open.

        None when ``app`` (the lane's ``answer``) declined: nothing was started or sent.
        """
        declined = False
        try:
            started = datetime.now()
            if app is None:
                self.cfg.pre_request(self, req)
                body = self.wsgi(environ, resp.start_response)
            else:  # the lane: the hook runs only for a request it answers (not one it declines)
                body = app(environ, resp.start_response)
                if body is None:
                    declined = True
                    return None
                self.cfg.pre_request(self, req)
            with self.counting:
                self.nr += 1
                last = self.nr >= self.max_requests
            if last and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            try:
                for chunk in body:
                    resp.write(chunk)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(body, "close"):
                    body.close()
            if resp.should_close():
                return False
            return gu.finish_body(conn.parser, time.monotonic() + BODY_DRAIN_SECONDS)
        except OSError:
            return False
        except Exception as exc:  # noqa: BLE001 - the app's errors are its own; this is ours
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
            else:
                self.handle_error(req, conn.sock, conn.addr, exc)
            return False
        finally:
            try:
                if not declined:  # a declined request is run again in a thread
                    self.cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001
                self.log.exception("Exception in post_request hook")
