"""How torch's CPU threads wait between two pieces of work: sleep, not spin, on a machine that is busy.

torch's CPU kernels run on OpenMP threads (GNU libgomp in the CPU wheels). A thread that has finished its
share of one operation spins for a while before it sleeps, so that the next operation starts without a
wake-up. When every core is already taken by other processes, that spinning takes the CPU away from the
process's own other thread, which each operation then waits for. On the 2-core dev box at a load average
of ~15, best of 8 on the embedded model sampled in 133 s with ``OMP_WAIT_POLICY=PASSIVE`` against 417 s
spinning, the two side by side (bench/RESULTS.md).

How OpenMP waits changes timing only, never results: the number of threads and how the work is split stay
the same (all eight candidates came out bit for bit equal). So it may follow the machine's load:
:func:`apply` asks for passive waiting when the 1-minute load average is above the number of cores, and
changes nothing on a quiet machine. libgomp reads the variable once, when ``import torch`` loads it: the CLI
calls :func:`apply` before anything imports torch. A value the user set (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``) is left as it is.
"""

from __future__ import annotations

import os

_USER_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def busy() -> bool:
    """Whether the 1-minute load average exceeds the cores this process may use."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not on this platform
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return load > cores


def apply() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` on a busy machine unless the user chose; returns whether it was set."""
    if any(v in os.environ for v in _USER_VARS) or not busy():
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
