"""One measurement in a fresh process, with its peak memory.

A spawned process carries no state from the runner (imports, caches, a warmed store), so each run costs
what it would cost alone, and its peak RSS is its own. Shared by the scripts in benchmarks/, which run
as scripts (`python benchmarks/x.py`), so this folder is on the path.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
from collections.abc import Callable
from queue import Empty
from typing import Any


def _in_child(queue: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    result = fn(*args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["workers_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    queue.put(result)


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args)'s figures, plus `peak_rss_mb` of its process and `workers_peak_rss_mb` of the largest
    process it started; a RuntimeError if the process dies without a result (never a hang)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(queue, fn, args))
    proc.start()
    while True:
        try:
            result: dict[str, Any] = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__} failed in its process (exit code {proc.exitcode})") from None
    proc.join()
    return result
