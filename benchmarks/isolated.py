"""One measurement in a fresh process, with its peak memory.

A spawned process carries no state from the runner (imports, caches, a warmed store), so each run costs
what it would cost alone, and its peak RSS is its own. Shared by the scripts in benchmarks/, which run
as scripts (`python benchmarks/x.py`), so this folder is on the path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any


class _Descendants(threading.Thread):
    """Samples this process's descendants in /proc (Linux) every 0.5 s: their peak RSS and CPU seconds.

    Ingest's staging workers are forked by a forkserver that outlives the pool, so they are not this
    process's waited-for children and `RUSAGE_CHILDREN` never counts them. A worker's last 0.5 s of CPU
    may be missed; elsewhere than Linux both figures stay 0."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb: dict[int, int] = {}
        self.cpu_ticks: dict[int, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            self._sample()

    def finish(self) -> tuple[float, float]:
        """(peak RSS MB of the largest descendant, CPU seconds of them all)."""
        self._done.set()
        self.join()
        self._sample()
        return max(self.peak_kb.values(), default=0) / 1024, sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        stats: dict[int, list[str]] = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = text[text.rindex(")") + 2:].split()  # fields from the 3rd, state
        parents = {pid: int(fields[1]) for pid, fields in stats.items()}
        for pid, fields in stats.items():
            if not self._descends(pid, parents):
                continue
            self.cpu_ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
            try:
                status = (Path("/proc") / str(pid) / "status").read_text()
            except OSError:
                continue
            peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), peak)

    @staticmethod
    def _descends(pid: int, parents: dict[int, int]) -> bool:
        me = os.getpid()
        for _ in range(64):
            pid = parents.get(pid, 0)
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False


def _in_child(queue: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    descendants = _Descendants()
    descendants.start()
    result = fn(*args)
    result["workers_peak_rss_mb"], result["workers_cpu_seconds"] = descendants.finish()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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
