"""What the benchmark's delta section measures and found: the job between Parquet and Delta Lake
tables, path by path, against the plain Parquet-to-Parquet run (bench.run_delta runs it,
bench.report_delta reports it)."""

from __future__ import annotations

from dataclasses import dataclass

from bench import measure
from bench.figures import median_seconds
from bench.workloads import Workload

# The section's paths: what the job reads and what it writes, in the order each round runs them.
PARQUET_TO_PARQUET = "Parquet->Parquet"  # the plain job: the reference every ratio is against
PARQUET_TO_DELTA = "Parquet->Delta"  # a new table each run
DELTA_TO_PARQUET = "Delta->Parquet"
DELTA_TO_DELTA = "Delta->Delta"  # a new table each run: the path the targets judge
DELTA_APPEND = "Delta->Delta, append"  # --mode append into one table that grows every round
DELTA_PATHS = (PARQUET_TO_PARQUET, PARQUET_TO_DELTA, DELTA_TO_PARQUET, DELTA_TO_DELTA, DELTA_APPEND)
READS_DELTA = frozenset({DELTA_TO_PARQUET, DELTA_TO_DELTA, DELTA_APPEND})
WRITES_DELTA = frozenset({PARQUET_TO_DELTA, DELTA_TO_DELTA, DELTA_APPEND})

DELTA_RATIO = 1.2  # Delta->Delta over Parquet->Parquet (fastest of each), at most
DELTA_RSS_MB = 400  # Delta->Delta's peak RSS (the largest over its runs), below


@dataclass(frozen=True)
class LogChild:
    """The log's child process (`python -m score.delta_log TABLE ""`) run by itself."""

    seconds: float  # wall time from spawn to exit
    peak_rss_mb: float  # its own peak RSS: a process beside the job's, not part of its figure
    version: int  # the table version it read
    files: int  # the live files it listed


@dataclass
class DeltaResults:
    """The delta section: the job over the default workload read from and written to Parquet
    and Delta tables, the paths in turns, round after round."""

    workload: Workload  # the default workload, as Parquet
    table: str  # its copy as a Delta table
    runs: dict[str, list[measure.JobRun]]  # per path (DELTA_PATHS), in the order they ran
    log_child: LogChild
    appended_version: int = 0  # the appended table's last version: one commit per run into it
    appended_rows: int = 0  # and its rows: every run's output, one after the other
    source: str = ""  # the code measured: its commit, and whether score/ differed from it

    @property
    def rounds(self) -> int:
        return len(self.runs[PARQUET_TO_PARQUET])

    def fastest(self, path: str) -> measure.JobRun:
        """The path's fastest run, with the largest peak RSS of its runs."""
        return measure.fastest(self.runs[path])

    def median(self, path: str) -> float:
        return median_seconds(self.runs[path])

    def path_ratio(self, path: str) -> float:
        """The path's fastest run over Parquet->Parquet's fastest."""
        return self.fastest(path).seconds / self.fastest(PARQUET_TO_PARQUET).seconds

    def path_median_ratio(self, path: str) -> float:
        """The same from the median runs: a second reading of a noisy machine."""
        return self.median(path) / self.median(PARQUET_TO_PARQUET)

    @property
    def ratio(self) -> float:
        """Delta->Delta (a new table) over Parquet->Parquet, fastest of each."""
        return self.path_ratio(DELTA_TO_DELTA)

    @property
    def median_ratio(self) -> float:
        return self.path_median_ratio(DELTA_TO_DELTA)

    @property
    def peak_rss_mb(self) -> float:
        """Delta->Delta's largest peak RSS over its runs."""
        return self.fastest(DELTA_TO_DELTA).peak_rss_mb

    def targets(self) -> list[tuple[str, str, bool]]:
        """The Delta Lake issue's targets: (target, measured, met)."""
        rows = f"default {self.workload.rows:,} rows"
        return [
            (
                f"Delta->Delta <= {DELTA_RATIO:.1f}x Parquet->Parquet (fastest of each), {rows}",
                f"{self.ratio:.2f}x",
                self.ratio <= DELTA_RATIO,
            ),
            (
                f"Delta->Delta peak RSS < {DELTA_RSS_MB} MB (the largest of its runs), {rows}",
                f"{self.peak_rss_mb:.0f} MB",
                self.peak_rss_mb < DELTA_RSS_MB,
            ),
        ]
