"""Per-key rate limits shared by every API process on a machine.

A token bucket per API key: ``CRM_RATE_LIMIT_PER_SECOND`` tokens a second, up to
``CRM_RATE_LIMIT_BURST``. The buckets live in a small memory-mapped file, and a request
updates its bucket under an exclusive ``flock``, so the gunicorn workers of one machine
share one budget per key. Limits apply per machine: behind a load balancer with N API
machines a key gets up to N times the rate. A request costs two ``flock`` calls and a few
bytes of shared memory, far cheaper than a database round trip.

Layout: ``SLOTS`` slots of 24 bytes: key fingerprint (u64), tokens (f64), last refill
(f64, ``time.monotonic``, which is system-wide on Linux). A key takes the first free or
matching slot of a short probe sequence; when all are taken, the least recently used is
reused (its key restarts with a full bucket).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

SLOTS = 8192
PROBES = 8
_SLOT = struct.Struct("<Qdd")


def default_path() -> Path:
    """Where the shared buckets live (``CRM_RATE_LIMIT_FILE`` overrides)."""
    return Path(tempfile.gettempdir()) / f"crm-service-ratelimit-{os.getuid()}.bin"


class RateLimiter:
    """Token buckets in a shared file; :meth:`take` answers how long to wait (0: go)."""

    def __init__(self, rate: float, burst: float, path: Path | None = None) -> None:
        self.rate, self.burst = rate, burst
        self.path = path or default_path()
        size = SLOTS * _SLOT.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._threads = threading.Lock()

    def close(self) -> None:
        """Release the mapping."""
        self._map.close()
        os.close(self._fd)

    def take(self, key_id: str) -> float:
        """Spend one token of ``key_id``'s bucket; 0.0 if allowed, else seconds until one."""
        if self.rate <= 0:
            return 0.0
        print_ = int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(),
                                "little") or 1
        first = print_ % SLOTS
        # flock excludes other processes only; threads of this one take the lock first.
        with self._threads:
            return self._take(print_, first)

    def _take(self, print_: int, first: int) -> float:
        """The bucket update, under the file lock (other processes)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic()
            victim, oldest = first, float("inf")
            for step in range(PROBES):
                slot = (first + step) % SLOTS
                owner, tokens, updated = _SLOT.unpack_from(self._map, slot * _SLOT.size)
                if owner == print_:
                    break
                if owner == 0:
                    tokens, updated = self.burst, now
                    break
                if updated < oldest:
                    victim, oldest = slot, updated
            else:
                slot, tokens, updated = victim, self.burst, now
            tokens = min(self.burst, tokens + max(0.0, now - updated) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            if not wait:
                tokens -= 1
            _SLOT.pack_into(self._map, slot * _SLOT.size, print_, tokens, now)
            return wait
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
