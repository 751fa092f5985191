"""Keep-alive workers sharing the load evenly: connections balanced, one worker per CPU.

With keep-alive, a connection stays with the worker that accepted it. gunicorn's workers all
wait on one listening socket and whichever wakes first takes a connection, so a burst of new
connections (a campaign tool opening its pool, a load balancer reconnecting) lands unevenly:
39 and 25 of 64 was typical here. Each worker's event loop serves all its ready connections per
turn, so the fuller worker answers every one of its connections later, and that worker sets the
tail latency. Two measures, both measured in BENCHMARKS.md (issue 18):

- :class:`Table`: a small table in shared memory, made in gunicorn's master before it forks
  (so every worker maps the same pages), where each worker writes how many connections it
  holds and when it last looked. A worker stops accepting while another live worker holds two
  or more fewer; that one always accepts, so a connection is never left waiting. A worker that
  has not written for :data:`STALE_SECONDS` (busy, stuck or gone) does not count.
- :func:`pin`: when there are no more workers than CPUs this process may use, each worker is
  bound to its own CPU (the first free one in the table), so the scheduler stops moving the
  event loops between CPUs and does not stack two on one. ``CRM_PIN_WORKERS=off`` turns it off
  (for example when the container's CPU quota is smaller than the CPUs it sees).
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct
import time

SLOTS = 64  # `crm-service serve --workers` is at most 64
STALE_SECONDS = 2.0
_SLOT = struct.Struct("<iiid")  # pid, connections, CPU (-1: not pinned), last written


class Table:
    """The workers' shared table; made before the fork."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, SLOTS * _SLOT.size)  # anonymous, shared across fork
        self.claim = multiprocessing.Lock()  # choosing a slot and a CPU
        self.maker = os.getpid()

    @property
    def shared(self) -> bool:
        """Whether this process was forked after the table was made (so shares it)."""
        return os.getpid() != self.maker

    def join(self) -> Seat:
        """A slot for this process (a free one, or one whose worker is gone)."""
        pid = os.getpid()
        if not self.shared:  # made in this very process: no other worker sees it
            return Seat(self, -1, pid)
        with self.claim:
            now = time.monotonic()
            for i in range(SLOTS):
                owner, _, _, beat = _SLOT.unpack_from(self.map, i * _SLOT.size)
                if owner == 0 or now - beat > STALE_SECONDS * 5 or not _alive(owner):
                    _SLOT.pack_into(self.map, i * _SLOT.size, pid, 0, -1, now)
                    return Seat(self, i, pid)
        return Seat(self, -1, pid)  # no slot: this worker accepts freely

    def rows(self) -> list[tuple[int, int, int, float]]:
        """Every slot: (pid, connections, CPU, last written)."""
        return [_SLOT.unpack_from(self.map, i * _SLOT.size) for i in range(SLOTS)]


class Seat:
    """One worker's slot."""

    def __init__(self, table: Table, index: int, pid: int) -> None:
        self.table, self.index, self.pid, self.cpu = table, index, pid, -1

    def publish(self, connections: int) -> None:
        """Write this worker's connection count (each turn of its loop)."""
        if self.index >= 0:
            _SLOT.pack_into(self.table.map, self.index * _SLOT.size, self.pid, connections,
                            self.cpu, time.monotonic())

    def may_accept(self, connections: int) -> bool:
        """False while another live worker holds at least two connections fewer."""
        if self.index < 0:
            return True
        now = time.monotonic()
        for i, (owner, held, _, beat) in enumerate(self.table.rows()):
            if i != self.index and owner and now - beat < STALE_SECONDS \
                    and held + 1 < connections:
                return False
        return True

    def leave(self) -> None:
        """Free the slot (the worker is exiting)."""
        if self.index >= 0:
            _SLOT.pack_into(self.table.map, self.index * _SLOT.size, 0, 0, -1, 0.0)


def pin(seat: Seat, workers: int) -> int | None:
    """Bind this worker to a CPU no other live worker holds; the CPU, or None if not pinned.

    Only when ``workers`` is at most the number of CPUs this process may use, and
    ``CRM_PIN_WORKERS`` is not ``off``.
    """
    if os.environ.get("CRM_PIN_WORKERS", "auto").lower() in ("off", "0", "false", "no"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if workers > len(cpus) or seat.index < 0:
        return None
    with seat.table.claim:
        now = time.monotonic()
        taken = {cpu for i, (owner, _, cpu, beat) in enumerate(seat.table.rows())
                 if i != seat.index and owner and cpu >= 0 and now - beat < STALE_SECONDS * 5
                 and _alive(owner)}
        free = [c for c in cpus if c not in taken]
        if not free:
            return None
        seat.cpu = free[0]
        seat.publish(0)
    os.sched_setaffinity(0, {seat.cpu})
    return seat.cpu


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Made when gunicorn's master imports the worker class, before it forks the workers.
TABLE = Table()
