"""Row blocks evaluated on a small thread pool.

The per-row likelihoods work on (rows x quadrature nodes) arrays. In blocks of a few thousand
rows those arrays stay in cache and memory stays bounded; numpy releases the GIL inside each
array operation, so blocks on separate threads use separate cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _keep_freed_memory() -> None:
    """Have glibc keep freed block arrays for reuse instead of returning them to the kernel.

    By default arrays over 128 KB are mmap'ed and unmapped on free, so every likelihood step
    page-faults its temporaries in afresh; on a virtual machine that tripled the cost of a
    Pareto/NBD step. Raising the mmap and trim thresholds (glibc's mallopt) keeps them in the
    heap. Elsewhere (musl, macOS) this does nothing.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return
    if mallopt is not None:
        mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _keep_freed_memory()
            workers = int(os.environ.get("CRM_MODEL_THREADS", "0")) or min(os.cpu_count() or 1, 8)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-block")
        return _pool


def for_each_block(n: int, block: int, fn: Callable[[int, int], None]) -> None:
    """Call ``fn(lo, hi)`` for consecutive blocks covering ``range(n)``, in parallel.

    ``fn`` must write its results into disjoint slices; exceptions propagate to the caller.
    """
    bounds = [(lo, min(lo + block, n)) for lo in range(0, n, block)]
    if len(bounds) <= 1 or threading.current_thread().name.startswith("model-block"):
        for lo, hi in bounds:
            fn(lo, hi)
        return
    for future in [_executor().submit(fn, lo, hi) for lo, hi in bounds]:
        future.result()
