"""`python -m bench.memory [--sites] REPORT -- ARGS`: run `python -m score ARGS` in this process
and write where its memory stood at its peak.

A thread samples /proc/self/status every few milliseconds. When the resident set first comes
within 3% of its largest, it keeps the resident set, its anonymous and file-backed parts, the
bytes Arrow's memory pool held and where the job's thread was (memory that stays resident makes
the very largest sample come wherever a little more is added later); over the whole run, the
largest resident set and the pool's own peak. With --sites it runs tracemalloc
instead, which traces Python's objects and numpy's buffers (numpy reports them to it; Arrow's
pool is not traced): at the traced peak it takes a snapshot and lists the allocation sites
holding the most, each named by its frames in this repository. tracemalloc's bookkeeping and
snapshots take memory of their own, so a --sites run's resident figures are not the job's; a
plain run's are, give or take the sampling thread. REPORT receives one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import tracemalloc

SAMPLE_SECONDS = 0.005
NEAR_PEAK = 0.97  # a resident set this close to the largest counts as the peak
SNAPSHOT_STEP = 8_000_000  # a new snapshot when the traced bytes pass the last one's by this
FRAMES = 6  # frames tracemalloc keeps per allocation
SITES = 6  # allocation sites REPORT lists
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resident() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process, in bytes."""
    figures = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                figures[name] = int(value.split()[0]) * 1024
    return figures


def site(frames: list[tuple[str, int]], innermost: int = 0) -> str:
    """The (file, line) frames that lie in this repository, outermost first, then the last
    ``innermost`` frames wherever they lie (the library call a frame of ours is in)."""
    names: list[str] = []
    for index, (filename, line) in enumerate(frames):
        ours = (
            filename.startswith(REPO + os.sep)
            and "site-packages" not in filename  # the virtual environment may lie in REPO
            and filename != os.path.abspath(__file__)
        )
        if not ours and index < len(frames) - innermost:
            continue
        name = f"{os.path.relpath(filename, REPO) if ours else library_file(filename)}:{line}"
        if not names or names[-1] != name:  # a comprehension is a frame of its own, same line
            names.append(name)
    return " > ".join(names) or "(outside the repository)"


def library_file(filename: str) -> str:
    """A library's file from its package folder on: pyarrow/compute.py, not the whole path."""
    parts = filename.split(os.sep)
    if "site-packages" not in parts:
        return filename
    return os.sep.join(parts[parts.index("site-packages") + 1 :])


def thread_site(thread: int) -> str:
    """Where the thread ``thread`` is now: its frames in this repository, and the innermost."""
    frame = sys._current_frames().get(thread)
    if frame is None:
        return ""
    stack = traceback.extract_stack(frame)
    return site([(entry.filename, entry.lineno or 0) for entry in stack], innermost=1)


class Sampler:
    """Samples the process from a thread until stop()."""

    def __init__(self, sites: bool) -> None:
        import pyarrow as pa

        self.trace = sites  # tracemalloc is on: snapshot at the traced peak
        self.job_thread = threading.get_ident()  # built by the thread that runs the job
        self.arrow_pool = pa.default_memory_pool()
        self.rises: list[dict] = [{"VmRSS": 0}]  # each sample above every one before it
        self.traced_peak = 0
        self.snapshot: tracemalloc.Snapshot | None = None
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            figures = resident()
            if figures["VmRSS"] > self.rises[-1]["VmRSS"]:
                where = thread_site(self.job_thread)
                self.rises.append(
                    {**figures, "arrow": self.arrow_pool.bytes_allocated(), "where": where}
                )
            traced = tracemalloc.get_traced_memory()[0] if self.trace else 0
            if traced > self.traced_peak + SNAPSHOT_STEP:
                self.traced_peak = traced
                self.snapshot = tracemalloc.take_snapshot()
            time.sleep(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._running = False
        self._thread.join()

    @property
    def peak(self) -> dict:
        """The first sample within NEAR_PEAK of the largest resident set: where the memory
        rose to its peak (the very largest sample may come later, wherever a little more is
        added to memory that stays resident)."""
        largest = self.rises[-1]["VmRSS"]
        return next(rise for rise in self.rises if rise["VmRSS"] >= NEAR_PEAK * largest)

    def sites(self) -> list[tuple[str, int]]:
        """The allocation sites holding the most at the traced peak: (frames, bytes)."""
        if self.snapshot is None:
            return []
        totals: dict[str, int] = {}
        for statistic in self.snapshot.statistics("traceback"):
            name = site([(frame.filename, frame.lineno) for frame in statistic.traceback])
            totals[name] = totals.get(name, 0) + statistic.size
        return sorted(totals.items(), key=lambda item: item[1], reverse=True)[:SITES]


def main(argv: list[str]) -> int:
    sites = argv[:1] == ["--sites"]
    argv = argv[1:] if sites else argv
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m bench.memory [--sites] REPORT -- ARGS", file=sys.stderr)
        return 2
    report, arguments = argv[0], argv[2:]
    from score.__main__ import main as score_main

    if sites:
        tracemalloc.start(FRAMES)
    sampler = Sampler(sites)
    exit_code = score_main(arguments)
    sampler.stop()
    figures = {
        "exit_code": exit_code,
        "peak": sampler.peak,
        "largest": sampler.rises[-1]["VmRSS"],
        "arrow_peak": sampler.arrow_pool.max_memory(),
    }
    if sites:
        figures |= {"traced_peak": tracemalloc.get_traced_memory()[1], "sites": sampler.sites()}
    with open(report, "w") as handle:
        json.dump(figures, handle)
    return exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
