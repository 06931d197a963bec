"""Run a command and print its wall time and peak RSS as JSON on the last line of stderr.

Kept tiny (no imports beyond the standard library) because a child's ru_maxrss includes the
memory of the process that forked it.
"""

import json
import os
import sys
import time

start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_pid, status, usage = os.wait4(pid, 0)
print(
    json.dumps(
        {
            "rc": os.waitstatus_to_exitcode(status),
            "seconds": time.perf_counter() - start,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
        }
    ),
    file=sys.stderr,
)
