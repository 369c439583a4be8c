"""``zmix-register``: join a network as a new client, through a provider with open registration.

The command makes the client's keys (or reuses them, so a registration that got no answer can
simply be run again), asks the provider to admit the client (REGISTER, docs/protocol.md) over a
CURVE link authenticated with the new link key, and on REGISTERED writes the client's contact to
``STATE/contacts/NAME.json``. From then on ``zmix-send`` and ``zmix-recv`` work for the client as
for any other; other state directories reach it once they hold a copy of its contact.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import zmq

from zmix import wire
from zmix.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    exit_status_help,
    fail,
    positive_float,
)
from zmix.contacts import Contact, contact_path, read_contact, write_contact
from zmix.errors import ConfigError, WireError
from zmix.keys import PrivateIdentity, check_id, create_private, load_private
from zmix.runtime import links
from zmix.runtime.directory import DirectoryUnavailable, authority_peers, fetch_document
from zmix.topology import Role, Topology, valid_name
from zmix.topology_yaml import load_topology

RESEND = 1.0  # seconds between REGISTER attempts while no answer came

EXAMPLES = """\
examples:
  zmix-register --state zmix-local --name carol --provider provider-1
  zmix-send --state zmix-local --from carol --to alice "hello from a newcomer"
  cp zmix-local/contacts/carol.json OTHER-STATE/contacts/    # let other state dirs reach carol

The provider must have open registration (mailbox.open_registration in the topology). Running
the command again for a client already registered answers the same and changes nothing.

""" + exit_status_help(
    (EXIT_OK, "registered (or already registered with the same keys)"),
    (EXIT_FAILURE, "the provider refused (name_taken, key_taken, full, closed) or did not answer "
                   "within --timeout seconds, or no network document came from the "
                   "authorities within --timeout seconds"),
    usage="bad usage or configuration (an unknown provider, registration closed, a name that "
          "is a member already); nothing was sent")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of zmix-register."""
    parser = argparse.ArgumentParser(
        prog="zmix-register", description="Register a new client with a zmix provider.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", required=True, type=Path, help="the network's state directory")
    parser.add_argument("--name", required=True, help="the new client's name")
    parser.add_argument("--provider", required=True, help="the provider to keep its mail")
    parser.add_argument("--timeout", type=positive_float, default=20.0, metavar="SECONDS",
                        help="give up after SECONDS without an answer (default 20)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run zmix-register; return its exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        topology = load_topology(args.state / "topology.yaml")
        _check(topology, args)
        identity = _identity(args.state, topology, args.name)
        peers = authority_peers(topology, args.state)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE)
    # The provider's address and link key come from the authorities' document of this epoch.
    try:
        document = fetch_document(peers, topology.authority_threshold, topology.network,
                                  topology.epoch, topology.epoch.epoch_at(time.time()),
                                  args.timeout)
        provider = document.node(args.provider)
    except DirectoryUnavailable as exc:
        return fail(str(exc))
    except KeyError:
        return fail(f"provider {args.provider} is not in the network document of epoch "
                    f"{document.epoch}: the authorities do not list it now")
    endpoint = f"tcp://{provider.host}:{provider.port}"
    answer = _ask(topology, identity, endpoint, provider.curve_public, args.timeout)
    if answer is None:
        return fail(f"no answer from {provider.name} at {endpoint} within "
                    f"{args.timeout:g} s; is it running? (run this again: it is safe)")
    if isinstance(answer, wire.Error):
        return fail(f"{provider.name} refused to register {args.name!r}: {answer.code} "
                    f"({answer.text})")
    contact = Contact(args.name, identity.id, identity.public_key, identity.curve_public,
                      provider.name)
    path = write_contact(args.state, contact)
    print(f"registered {args.name} with {provider.name}; contact: {path}")
    json.dump({"name": contact.name, "provider": contact.provider, "id": contact.id.hex(),
               "public_key": contact.public_key.hex()}, sys.stdout)
    print()
    return EXIT_OK


def _check(topology: Topology, args: argparse.Namespace) -> None:
    where = str(args.state / "topology.yaml")
    try:
        provider = topology.node(args.provider)
    except KeyError:
        raise ConfigError(where, "providers", f"no provider named {args.provider!r}") from None
    if provider.role is not Role.PROVIDER:
        raise ConfigError(where, "providers", f"{args.provider!r} is a mixnode, not a provider")
    if not topology.mailbox.open_registration:
        raise ConfigError(where, "mailbox.open_registration", "is off: the providers of this "
                          "network admit only the clients the topology declares")
    if not valid_name(args.name):
        raise ConfigError("--name", "name",
                          "must be 1-64 letters, digits, '_', '.' or '-', not . or ..")
    if args.name in topology.names():
        raise ConfigError(where, "clients", f"{args.name!r} is already a member of the network")
    existing = contact_path(args.state, args.name)
    if existing.exists():
        known = read_contact(existing, topology.network).provider
        if known != args.provider:
            raise ConfigError(str(existing), "provider", f"{args.name!r} is registered with "
                              f"{known!r}, not {args.provider!r}")


def _identity(state_dir: Path, topology: Topology, name: str) -> PrivateIdentity:
    private, contact = state_dir / "private" / f"{name}.json", contact_path(state_dir, name)
    if private.exists():
        identity = load_private(state_dir, name)
        check_id(private, name, topology.network, identity.id)
        return identity
    if contact.exists():
        raise ConfigError(str(contact), "(file)",
                          f"{name!r} is a contact here, without its private keys (copied from "
                          "elsewhere?); register another name, or run this where its keys are")
    return create_private(state_dir, topology.network, name, "client")


def _ask(topology: Topology, me: PrivateIdentity, endpoint: str, server_key: bytes,
         timeout: float) -> wire.Registered | wire.Error | None:
    """Send REGISTER until the provider answers or ``timeout`` passes; return the answer."""
    request = wire.encode(wire.Register(me.curve_public, me.public_key, me.name),
                          params=topology.sphinx, slots=topology.mailbox.fetch_slots)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = links.connect_dealer(ctx, endpoint, server_key, me.curve_public, me.curve_private,
                                max_frame=wire.client_frame_limit(
                                    topology.sphinx, topology.mailbox.fetch_slots))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(zmq.Again):  # not connected yet: try again after a pause
                sock.send(request, zmq.NOBLOCK)
            wait_until = min(deadline, time.monotonic() + RESEND)
            while (left := wait_until - time.monotonic()) > 0:
                if not sock.poll(int(left * 1000) + 1):
                    break
                try:
                    frame = wire.decode(sock.recv(), params=topology.sphinx,
                                        slots=topology.mailbox.fetch_slots)
                except WireError:
                    continue
                if isinstance(frame, wire.Registered) and frame.name == me.name:
                    return frame
                if isinstance(frame, wire.Error):
                    return frame
        return None
    finally:
        sock.close(linger=0)
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
