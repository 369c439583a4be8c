"""``zmix-bench``: the benchmarks, each reporting ratios measured within one run."""

from __future__ import annotations

import importlib
import sys

from zmix.cli.common import fail

BENCHMARKS = {
    "sphinx": ("zmix.bench.sphinx", "per-hop processing against the crypto floor"),
    "node": ("zmix.bench.node", "one mixnode process under load: packets/s, loss, CPU/packet"),
    "mailbox": ("zmix.bench.mailbox", "durable mailbox store and fetch throughput"),
    "e2e": ("zmix.bench.e2e", "a whole local network: latency, per-hop overhead, goodput"),
}

USAGE = "usage: zmix-bench {" + ",".join(BENCHMARKS) + "} [options]   (zmix-bench NAME --help)"


def help_text() -> str:
    """Return the --help text."""
    lines = [USAGE, "", "benchmarks:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in BENCHMARKS.items()]
    lines += ["", "examples:", "  zmix-bench sphinx", "  zmix-bench node --json",
              "  zmix-bench e2e --messages 100 --mean-delay 0.02"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark; return its exit status (2 for an unknown benchmark)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(help_text())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in BENCHMARKS:
        return fail(f"no benchmark named {name!r}; choose one of {', '.join(BENCHMARKS)}", 2)
    module = importlib.import_module(BENCHMARKS[name][0])
    status: int = module.main(rest)
    return status


if __name__ == "__main__":
    sys.exit(main())
