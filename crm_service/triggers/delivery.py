"""The webhook dispatcher: threads in the worker that post queued deliveries.

- One fan-out thread turns new outbox events into deliveries (:func:`webhooks.fan_out`).
- ``CRM_WEBHOOK_CONCURRENCY`` sender threads each claim one delivery at a time, post it and
  record the outcome, each on its own database connection, keeping HTTP connections alive per
  receiver. A slow receiver ties up at most the threads posting to it, for at most
  ``CRM_WEBHOOK_TIMEOUT_SECONDS`` each; scoring runs in the worker's main thread and the API in
  other processes, so neither waits for a receiver.
- Every connection goes to an address checked by the SSRF guard at send time (not only when the
  subscription was made), with the URL's host in the Host header and TLS SNI, so a DNS answer
  that changes to a private address is refused. Redirects are not followed.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from crm_service import __version__
from crm_service.errors import CrmError, DatabaseUnavailableError, ValidationError
from crm_service.platform import metrics, secretbox
from crm_service.platform.config import Settings
from crm_service.platform.db import DatabaseError
from crm_service.storage import webhooks as webhook_store
from crm_service.triggers import webhooks
from crm_service.triggers.signing import payload, sign
from crm_service.triggers.ssrf import Target, check_url

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)
USER_AGENT = f"crm-service-webhooks/{__version__}"
_MAX_RESPONSE = 64 * 1024


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a fixed, already checked address."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    """HTTPS to a fixed address, with the certificate checked against the URL's host."""

    _tls = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


class Sender:
    """Posts deliveries; keeps one live connection per receiver (one Sender per thread)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conns: dict[tuple[str, str, int, str], _PinnedHTTP] = {}
        self._targets: dict[str, tuple[float, Target]] = {}

    def _target(self, url: str) -> Target:
        cached = self._targets.get(url)
        if cached and time.monotonic() - cached[0] < 60:
            return cached[1]
        target = check_url(url, self.settings.webhook_allow_hosts)
        self._targets[url] = (time.monotonic(), target)
        return target

    def close(self) -> None:
        """Close kept-alive connections."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def post(self, job: webhooks.Job) -> tuple[int | None, str | None]:
        """(status code, error) of one attempt; never raises for receiver trouble."""
        try:
            target = self._target(job.url)
        except ValidationError as exc:
            return None, exc.detail
        body = payload(job.event)
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "webhook-id": job.delivery_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(job.secret, job.delivery_id, stamp, body),
            "crm-event-type": job.event["type"], "crm-event-id": job.event["id"],
            "crm-delivery-attempt": str(job.attempt),
        }
        address = target.addresses[0]
        key = (target.scheme, target.host, target.port, address)
        for fresh in (False, True):
            conn = self._conns.get(key)
            reused = conn is not None
            if conn is None or fresh:
                if conn is not None:
                    conn.close()
                kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
                conn = kind(target.host, target.port, address,
                            self.settings.webhook_timeout_seconds)
                self._conns[key] = conn
            try:
                conn.request("POST", target.path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read(_MAX_RESPONSE)
                if resp.will_close or not resp.isclosed():
                    conn.close()
                    self._conns.pop(key, None)
                if 300 <= resp.status < 400:
                    return resp.status, "redirects are not followed"
                return resp.status, None if 200 <= resp.status < 300 else resp.reason[:200]
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._conns.pop(key, None)
                if reused and not fresh:
                    continue  # the receiver closed an idle kept-alive connection: one retry
                return None, f"connection failed: {type(exc).__name__}"
            except TimeoutError:
                conn.close()
                self._conns.pop(key, None)
                return None, f"timed out after {self.settings.webhook_timeout_seconds:g} s"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._conns.pop(key, None)
                return None, f"connection failed: {type(exc).__name__}: {exc}"[:300]
        return None, "connection failed"


class Dispatcher:
    """Fan-out and sender threads; :meth:`start` them, :meth:`stop` to end."""

    def __init__(self, connect: Callable[[], psycopg.Connection], settings: Settings, *,
                 poll_seconds: float = 0.5) -> None:
        self.connect = connect
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.delivered = 0
        self._key: bytes | None = None

    def start(self) -> Dispatcher:
        """Start the fan-out thread and the sender threads."""
        self.threads = [threading.Thread(target=self._guard, args=(self._fan_out_loop,),
                                         name="webhook-fanout", daemon=True)]
        self.threads += [threading.Thread(target=self._guard, args=(self._send_loop,),
                                          name=f"webhook-send-{i}", daemon=True)
                         for i in range(self.settings.webhook_concurrency)]
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the threads to finish their current delivery and end; wait for them."""
        self.stopping.set()
        self.wake.set()
        for t in self.threads:
            t.join(timeout)

    def _guard(self, loop: Callable[[psycopg.Connection], None]) -> None:
        """Run ``loop`` with a connection; on database trouble reconnect after a pause."""
        while not self.stopping.is_set():
            conn = None
            try:
                conn = self.connect()
                # Claim and success are one statement each: autocommit saves the BEGIN and
                # COMMIT round trips. A lease or outcome lost in a crash only means one more
                # delivery (at least once), so commits need not wait for the WAL flush.
                conn.autocommit = True
                webhook_store.without_waiting_for_flush(conn)
                loop(conn)
            except (DatabaseError, DatabaseUnavailableError) as exc:
                log.warning("webhook dispatcher lost the database (%s); retrying", exc)
            except CrmError as exc:
                log.error("webhook dispatcher: %s", exc.detail)
            except Exception:
                log.exception("webhook dispatcher failed; restarting the thread")
            finally:
                if conn is not None:
                    conn.close()
            self.stopping.wait(max(self.poll_seconds, 1.0))

    def _fan_out_loop(self, conn: psycopg.Connection) -> None:
        while not self.stopping.is_set():
            if webhooks.fan_out(conn):
                self.wake.set()
            self.stopping.wait(self.poll_seconds)

    def _send_loop(self, conn: psycopg.Connection) -> None:
        sender = Sender(self.settings)
        if self._key is None:
            self._key = secretbox.server_key(self.settings)
        try:
            while not self.stopping.is_set():
                job = webhooks.claim(conn, self.settings, self._key)
                if job is None:
                    self.wake.wait(self.poll_seconds)
                    self.wake.clear()
                    continue
                started = time.time()
                t0 = time.perf_counter()
                status_code, error = sender.post(job)
                ms = (time.perf_counter() - t0) * 1000
                outcome = webhooks.record(conn, self.settings, job, started=started,
                                          duration_ms=ms, status_code=status_code, error=error)
                metrics.record_delivery(outcome)
                if outcome == "delivered":
                    self.delivered += 1
                else:
                    log.info("webhook %s delivery %s attempt %s: %s", job.webhook_id,
                             job.delivery_id, job.attempt, error or f"HTTP {status_code}")
        finally:
            sender.close()
