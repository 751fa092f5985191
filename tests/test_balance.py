"""Keep-alive workers sharing connections evenly and one CPU each (api.serving.balance).

Real forked processes share the table as gunicorn's workers do (made before the fork).
"""

import multiprocessing
import os
import time

import pytest

from api.serving import balance


def _worker(table, held, out):
    seat = table.join()
    seat.publish(held)
    out.put((seat.index, os.getpid()))
    time.sleep(1.5)  # stay alive (and fresh) while the parent looks
    seat.leave()


@pytest.fixture()
def forked():
    return multiprocessing.get_context("fork")


def test_a_worker_ahead_by_two_stops_accepting_until_the_other_catches_up(forked):
    table = balance.Table()
    out = forked.Queue()
    other = forked.Process(target=_worker, args=(table, 10, out))
    other.start()
    index, _ = out.get(timeout=10)

    def me_with(held):  # a seat as a forked worker would hold it
        seat = balance.Seat(table, (index + 1) % balance.SLOTS, os.getpid())
        seat.publish(held)
        return seat

    assert me_with(11).may_accept(11)  # one ahead: fine
    assert not me_with(12).may_accept(12)  # two ahead of a live worker: the other takes it
    other.join(timeout=10)  # it left: its slot no longer counts
    assert me_with(40).may_accept(40)


def test_a_silent_worker_does_not_hold_the_others_back(forked, monkeypatch):
    table = balance.Table()
    out = forked.Queue()
    other = forked.Process(target=_worker, args=(table, 0, out))
    other.start()
    out.get(timeout=10)
    seat = balance.Seat(table, balance.SLOTS - 1, os.getpid())
    assert not seat.may_accept(5)
    later = time.monotonic() + balance.STALE_SECONDS + 0.1
    monkeypatch.setattr(balance.time, "monotonic", lambda: later)
    assert seat.may_accept(5)  # not written for STALE_SECONDS: busy, stuck or gone
    other.join(timeout=10)


def test_a_table_made_in_the_same_process_is_not_shared():
    """Imported in the worker itself (not before a fork), nothing is balanced or pinned."""
    seat = balance.Table().join()
    assert seat.index == -1 and seat.may_accept(1000)
    assert balance.pin(seat, 1) is None


def _pinned(table, workers, out):
    seat = table.join()
    cpu = balance.pin(seat, workers)
    out.put((cpu, sorted(os.sched_getaffinity(0))))
    time.sleep(1.0)
    seat.leave()


def test_workers_are_pinned_to_different_cpus_when_there_are_enough(forked):
    cpus = sorted(os.sched_getaffinity(0))
    table = balance.Table()
    out = forked.Queue()
    n = min(2, len(cpus))
    procs = [forked.Process(target=_pinned, args=(table, n, out)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=10) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    assert sorted(cpu for cpu, _ in got) == cpus[:n]
    assert all(affinity == [cpu] for cpu, affinity in got)
    # More workers than CPUs, or switched off: not pinned.
    procs = [forked.Process(target=_pinned, args=(table, len(cpus) + 1, out))]
    procs[0].start()
    assert out.get(timeout=10)[0] is None
    procs[0].join(timeout=10)


def test_pinning_can_be_switched_off(forked, monkeypatch):
    monkeypatch.setenv("CRM_PIN_WORKERS", "off")
    table = balance.Table()
    out = forked.Queue()
    p = forked.Process(target=_pinned, args=(table, 1, out))
    p.start()
    assert out.get(timeout=10)[0] is None
    p.join(timeout=10)
