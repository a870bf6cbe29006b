"""`python -m bench.launch REPORT -- COMMAND...`: run COMMAND, write its wall time and peak RSS.

A small intermediate process. Linux keeps a process's peak RSS across fork and exec, so a
child forked straight from the benchmark (which holds numpy, pyarrow and the workloads) would
start with the benchmark's peak as its own. Forked from this small process instead, the child's
ru_maxrss (from os.wait4, the reaped child's alone) is the command's own. REPORT receives one
JSON object: seconds, peak_rss_kib, exit_code. The command's stdout and stderr are inherited.
"""

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m bench.launch REPORT -- COMMAND...", file=sys.stderr)
        return 2
    report, command = argv[0], argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawn(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    exit_code = os.waitstatus_to_exitcode(status)
    with open(report, "w") as handle:
        json.dump(
            {"seconds": seconds, "peak_rss_kib": usage.ru_maxrss, "exit_code": exit_code}, handle
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
