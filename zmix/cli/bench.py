"""``zmix-bench``: the benchmarks, each reporting ratios measured within one run."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import FrameType

from zmix.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, exit_status_help, fail
from zmix.errors import ZmixError

BENCHMARKS = {
    "sphinx": ("zmix.bench.sphinx", "per-hop processing of each wire profile against the crypto "
                                    "floor (--peers: against other Python Sphinx libraries)"),
    "node": ("zmix.bench.node", "one mixnode process under load: packets/s, loss, CPU/packet"),
    "mailbox": ("zmix.bench.mailbox", "durable mailbox store and fetch throughput"),
    "e2e": ("zmix.bench.e2e", "a whole local network: latency, per-hop overhead, goodput"),
    "socks": ("zmix.bench.socks", "a download through zmix-socks and zmix-exit: time to first "
                                  "byte, throughput against the payload rate's bound"),
    "sim": ("zmix.bench.sim", "the simulator (zmix-sim): events and simulated seconds per "
                              "second at 100 and 1,000 clients, with and without the analysis"),
}

USAGE = "usage: zmix-bench {" + ",".join(BENCHMARKS) + "} [options]   (zmix-bench NAME --help)"


def help_text() -> str:
    """Return the --help text."""
    lines = [USAGE, "", "benchmarks:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", "examples:", "  zmix-bench sphinx",
              "  zmix-bench sphinx --peers --peer-python smc=VENV/bin/python",
              "  zmix-bench node --json",
              "  zmix-bench e2e --messages 100 --mean-delay 0.02",
              "  zmix-bench socks --size-kib 1024",
              "  zmix-bench sim --clients 100,1000 --duration 60", ""]
    lines += exit_status_help(
        (EXIT_OK, "the benchmark ran and printed its figures"),
        (EXIT_FAILURE, "the benchmark failed (e.g. its network did not start, a message "
                       "did not arrive in time, or an installed --peers library failed), or "
                       "SIGTERM or SIGINT stopped it (after it stopped every process it "
                       "started and removed its temporary folder; a second one stops it at "
                       "once)"),
        usage="bad usage: an unknown benchmark or option; nothing ran").splitlines()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; return its exit status (0 done, 1 it failed, 2 bad usage)."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(help_text(), file=sys.stderr)
        return EXIT_USAGE
    if args[0] in ("-h", "--help"):
        print(help_text())
        return EXIT_OK
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        return fail(f"no benchmark named {name!r}; choose one of {', '.join(BENCHMARKS)}",
                    EXIT_USAGE)
    # SIGTERM's default action would end the process without unwinding, leaving the nodes,
    # authorities and servers a benchmark started running, and its temporary folder behind.
    handled = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop) for sig in _STOP_SIGNALS} if handled else {}
    try:
        status: int = importlib.import_module(BENCHMARKS[name][0]).main(rest)
    except Stopped as exc:
        return fail(f"zmix-bench {name}: stopped by {exc}; the processes it started were "
                    "stopped", EXIT_FAILURE)
    except (ZmixError, RuntimeError, OSError) as exc:
        return fail(f"zmix-bench {name}: {exc}", EXIT_FAILURE)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """SIGTERM or SIGINT came: raised where the benchmark is, so that its ``finally`` blocks
    stop what it started (a BaseException, as KeyboardInterrupt is: no ``except Exception``
    on the way takes it for a failure to handle)."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    """Raise Stopped, once: a second signal during the clean-up ends the process at once."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    raise Stopped(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
