"""Peak memory of one command, free of the test process's own.

Linux carries a process's peak RSS across exec, and a vfork/posix_spawn child shares its
parent's memory until then, so ru_maxrss of a child that pytest starts is at least pytest's
own peak (hundreds of MB late in a full run). A small wrapper, started fresh, runs the
command and reports its RUSAGE_CHILDREN: only the wrapper's few MB carry over to it.
"""

from __future__ import annotations

import re
import sys

_WRAP = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stderr.write('\\nPEAK_KIB=%d\\n' % peak)\n"
    "sys.exit(rc if rc >= 0 else 128 - rc)\n"
)
_PEAK = re.compile(r"\nPEAK_KIB=(\d+)\n$")


def wrapped(args: list[str]) -> list[str]:
    """`args` run under the measuring wrapper; split its stderr with `split_peak`."""
    return [sys.executable, "-c", _WRAP, *args]


def split_peak(stderr: str) -> tuple[str, int]:
    """(the command's own stderr, its peak RSS in KiB) from a wrapped run's stderr."""
    m = _PEAK.search(stderr)
    assert m, f"no peak reported: {stderr[-500:]!r}"
    return stderr[:m.start()], int(m.group(1))


# For a Python child that reports its own peak: VmHWM is the peak of the address space made
# at exec, so nothing of the parent's carries over. Prepend to the child's code.
HWM_KB = r"""
def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""
