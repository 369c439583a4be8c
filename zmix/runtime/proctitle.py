"""Process titles: what ``ps`` and ``top`` show for each zmix process (docs/monitoring.md).

Every zmix process would otherwise show as ``python3 -m zmix.cli.node --state ...`` (its
command line) and ``python3`` (its short name), and a host running eight nodes and their
workers is a column of identical lines. Each process names itself as soon as its arguments are
parsed, before its slow start (keys, sockets, workers).
"""

from __future__ import annotations

import setproctitle

COMM_LENGTH = 15  # bytes the kernel keeps of a process's short name (/proc/PID/comm)


def set_title(program: str, name: str, short: str | None = None) -> None:
    """Set this process's title (its command line, what ``ps -o args`` and ``top -c`` show) to
    ``PROGRAM NAME``, and its short name (``/proc/PID/comm``, what ``top`` and ``ps -o comm``
    show) to ``short``, or else ``name``, cut to 15 bytes."""
    setproctitle.setproctitle(f"{program} {name}")
    # setproctitle cuts the whole title to 15 bytes for the short name ("zmix-worker mix"):
    # the name alone tells one worker from another, so it goes there instead.
    short_name = (short or name).encode()[:COMM_LENGTH].decode(errors="ignore")
    setproctitle.setthreadtitle(short_name)
