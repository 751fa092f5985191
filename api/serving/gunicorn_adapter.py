"""Every piece of gunicorn the serving lane uses, in one place, checked when a worker starts.

gunicorn documents custom worker classes (subclass ``gunicorn.workers.base.Worker``), its config
and its hooks. :class:`api.serving.server.ProblemKeepAliveWorker` needs more than that: it reads
request heads on an event loop and reuses gunicorn's HTTP parser and WSGI response, which means
touching what gunicorn does not promise to keep:

=====================================  =========================================================
internal                               used for
=====================================  =========================================================
``parser.unreader.buf`` (a BytesIO)    putting bytes read without blocking where the parser
                                       reads, and seeing whether a next request is buffered
``Request._expected_100_continue``     sending requests with ``Expect: 100-continue`` to a
                                       thread (gunicorn writes the interim answer blocking)
``Parser.finish_body(deadline=)``      draining what the app left of a body, within a deadline,
                                       before the connection is kept alive
``wsgi.create(req, sock, addr, ...)``  the WSGI environ and response (semi-public)
``Response.sock``                      gathering an inline answer's head and body into one send
=====================================  =========================================================

Nothing else in the project touches them: ``server.py`` calls the functions here, and
``tests/test_layering.py`` checks that no other module imports gunicorn.
:func:`check` runs when a keep-alive worker starts (and in ``tests/test_gunicorn_adapter.py``)
and fails loudly, naming what changed, on a gunicorn that lacks any of it. The range tested
is :data:`TESTED`; ``pyproject.toml`` pins it.

**Exit plan** (when gunicorn moves and the adapter cannot follow): serve with
``--worker-class api.serving.server.ProblemThreadWorker`` (gunicorn's gthread worker, public
API only; the lane still answers each lookup alone, without batching: about half the
throughput, measured in BENCHMARKS.md), or with granian (``bench/api_lookup.py --server
granian-batched`` measures it with a micro-batcher). Nothing outside ``api/serving`` changes
either way: the lane (:class:`api.serving.fastpath.LookupLane`) is plain WSGI middleware with
the :class:`api.serving.fastpath.BatchingLane` interface.
"""

from __future__ import annotations

import inspect
import io
import socket
from typing import Any

import gunicorn
from gunicorn import http, util
from gunicorn.http import errors as http_errors
from gunicorn.http import message, wsgi
from gunicorn.http import parser as http_parser
from gunicorn.workers import base
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

TESTED = (27, 28)  # gunicorn major versions: at least the first, below the second

# Re-exported: the documented extension points the worker classes build on, and the parser's
# errors (the problem+json answers to unparseable requests).
Worker, GthreadWorker, BlockingWorker = base.Worker, ThreadWorker, SyncWorker
LimitRequestLine = http_errors.LimitRequestLine
LimitRequestHeaders = http_errors.LimitRequestHeaders
ParseException = http_errors.ParseException
NoMoreData = http_errors.NoMoreData
write_nonblock, close_on_exec, close = util.write_nonblock, util.close_on_exec, util.close


class IncompatibleGunicorn(RuntimeError):
    """The installed gunicorn lacks something the keep-alive worker relies on."""


def version() -> tuple[int, ...]:
    """The installed gunicorn's version, as numbers."""
    return tuple(int(p) for p in gunicorn.__version__.split(".")[:3] if p.isdigit())


def check() -> None:
    """Raise :class:`IncompatibleGunicorn`, saying what is missing, unless all of it is here."""
    missing: list[str] = []
    major = version()[:1]
    if not major or not TESTED[0] <= major[0] < TESTED[1]:
        missing.append(f"a gunicorn {TESTED[0]}.x (installed: {gunicorn.__version__})")
    finish = getattr(http_parser.Parser, "finish_body", None)
    if finish is None or "deadline" not in inspect.signature(finish).parameters:
        missing.append("gunicorn.http.parser.Parser.finish_body(deadline=...)")
    if not isinstance(getattr(message.Request, "_expected_100_continue", None), bool):
        missing.append("gunicorn.http.message.Request._expected_100_continue")
    create = getattr(wsgi, "create", None)
    if create is None or list(inspect.signature(create).parameters)[:5] != [
            "req", "sock", "client", "server", "cfg"]:
        missing.append("gunicorn.http.wsgi.create(req, sock, client, server, cfg)")
    for name in ("force_close", "should_close", "start_response", "write", "close"):
        if not callable(getattr(wsgi.Response, name, None)):
            missing.append(f"gunicorn.http.wsgi.Response.{name}")
    if not missing:
        missing += _parser_buffer_missing()
    if missing:
        raise IncompatibleGunicorn(
            "api.serving.server.ProblemKeepAliveWorker needs gunicorn internals that the "
            "installed gunicorn does not have: " + "; ".join(missing) + ". Serve with "
            "--worker-class api.serving.server.ProblemThreadWorker meanwhile (see the exit plan "
            "in api/serving/gunicorn_adapter.py).")


def _parser_buffer_missing() -> list[str]:
    """A parser made on a socket pair keeps read-ahead bytes in ``unreader.buf``."""
    from gunicorn.config import Config

    a, b = socket.socketpair()
    try:
        p = http.get_parser(Config(), a, ("127.0.0.1", 0))
        buf = getattr(getattr(p, "unreader", None), "buf", None)
        if not isinstance(buf, io.BytesIO):
            return ["gunicorn.http.unreader.SocketUnreader.buf (a BytesIO)"]
        append(p, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        first = next(p)
        if first.path != "/a" or not buffered(p).startswith(b"GET /b"):
            return ["a parser that reads what was put in unreader.buf and keeps the rest"]
        return []
    finally:
        a.close()
        b.close()


def new_parser(cfg: Any, sock: socket.socket, addr: Any) -> Any:
    """The HTTP parser (gunicorn's) for a connection (an iterator of requests)."""
    return http.get_parser(cfg, sock, addr)


def buffered(parser: Any) -> bytes:
    """The bytes the parser holds, read ahead of what it has parsed."""
    return bytes(parser.unreader.buf.getvalue())


def append(parser: Any, chunk: bytes) -> None:
    """Put bytes read off the socket where the parser will read them next."""
    buf = parser.unreader.buf
    buf.seek(0, io.SEEK_END)
    buf.write(chunk)


def expects_continue(req: Any) -> bool:
    """Whether the client waits for ``100 Continue`` before sending the body."""
    return bool(req._expected_100_continue)


def finish_body(parser: Any, deadline: float) -> bool:
    """Drain what is left of the current request's body by ``deadline``; True if it was."""
    return bool(parser.finish_body(deadline=deadline))


def create(req: Any, sock: Any, addr: Any, server: Any, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The WSGI response and environ (gunicorn's) for a parsed request."""
    return wsgi.create(req, sock, addr, server, cfg)


def redirect(resp: Any, sink: Any) -> None:
    """Make the response write to ``sink`` (anything with ``sendall``) instead of its socket."""
    resp.sock = sink
