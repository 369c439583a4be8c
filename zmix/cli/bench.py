"""``zmix-bench``: the benchmarks, each reporting ratios measured within one run."""

from __future__ import annotations

import importlib
import sys

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
                       "did not arrive in time, or an installed --peers library failed)"),
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
    module = importlib.import_module(BENCHMARKS[name][0])
    try:
        status: int = module.main(rest)
    except (ZmixError, RuntimeError, OSError) as exc:
        return fail(f"zmix-bench {name}: {exc}", EXIT_FAILURE)
    return status


if __name__ == "__main__":
    sys.exit(main())
