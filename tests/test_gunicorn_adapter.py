"""The one module that touches gunicorn's internals (api.serving.gunicorn_adapter).

The installed gunicorn must pass :func:`check` (this test fails loudly after an upgrade that
moves what the keep-alive worker relies on), and :func:`check` must name what is missing when
something is. The adapter's functions are exercised on a real socket pair with gunicorn's real
parser.
"""

import socket
import time

import pytest
from gunicorn.config import Config
from gunicorn.http import message
from gunicorn.http import parser as http_parser

from api.serving import gunicorn_adapter as gu


def test_the_installed_gunicorn_has_everything_the_worker_uses():
    gu.check()  # raises IncompatibleGunicorn, naming what is missing


@pytest.mark.parametrize(("break_it", "named"), [
    (lambda mp: mp.setattr(gu.gunicorn, "__version__", "28.0.0"), "a gunicorn 27.x"),
    (lambda mp: mp.delattr(http_parser.Parser, "finish_body"), "finish_body(deadline=...)"),
    (lambda mp: mp.setattr(http_parser.Parser, "finish_body", lambda self: True),
     "finish_body(deadline=...)"),
    (lambda mp: mp.delattr(next(c for c in message.Request.__mro__
                                if "_expected_100_continue" in vars(c)),
                           "_expected_100_continue"),
     "_expected_100_continue"),
    (lambda mp: mp.setattr(gu.wsgi, "create", lambda req, sock, addr, cfg: None),
     "wsgi.create"),
    (lambda mp: mp.delattr(gu.wsgi.Response, "should_close"), "Response.should_close"),
])
def test_check_names_what_an_incompatible_gunicorn_lacks(monkeypatch, break_it, named):
    break_it(monkeypatch)
    with pytest.raises(gu.IncompatibleGunicorn) as caught:
        gu.check()
    assert named in str(caught.value)
    assert "ProblemThreadWorker" in str(caught.value)  # what to do meanwhile


def test_check_notices_a_parser_that_no_longer_buffers_where_the_worker_writes(monkeypatch):
    real = gu.http.get_parser

    def elsewhere(cfg, sock, addr):
        p = real(cfg, sock, addr)
        p.unreader.buf = bytearray()  # no longer a BytesIO
        return p

    monkeypatch.setattr(gu.http, "get_parser", elsewhere)
    with pytest.raises(gu.IncompatibleGunicorn, match=r"Unreader\.buf"):
        gu.check()


def test_the_keepalive_worker_refuses_to_start_on_an_incompatible_gunicorn(monkeypatch):
    from api.serving.server import ProblemKeepAliveWorker

    monkeypatch.setattr(gu.gunicorn, "__version__", "29.1.0")
    worker = ProblemKeepAliveWorker.__new__(ProblemKeepAliveWorker)
    with pytest.raises(gu.IncompatibleGunicorn, match="29.1.0"):
        worker.init_process()


def test_the_adapter_reads_pipelined_requests_and_drains_bodies():
    a, b = socket.socketpair()
    try:
        p = gu.new_parser(Config(), a, ("127.0.0.1", 0))
        gu.append(p, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\nhello")
        gu.append(p, b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n")
        first = next(p)
        assert first.path == "/x" and gu.expects_continue(first)
        # The app never read the body: it is drained before the next request.
        assert gu.finish_body(p, time.monotonic() + 1)
        assert gu.buffered(p).startswith(b"GET /y")
        second = next(p)
        assert second.path == "/y" and not gu.expects_continue(second)
        assert gu.buffered(p) == b""
    finally:
        a.close()
        b.close()
