"""Every statistic a node reports, declared once: its name, its kind and what it means.

A node's statistics are one flat mapping of names to numbers (``NodeProcess``'s ``statistics()``,
served on the control socket). This table is what that mapping is made of: the Prometheus export
takes each statistic's type and HELP line from here, docs/operations.md's table is this table
(``python -m zmix.stats_schema`` prints it), and tests check that a running node reports exactly
these names, no more and no fewer.

A new statistic is one more line in :data:`STATISTICS` (and the row it prints in the docs).
Help texts are plain text (no ``|``, no backticks), because they are Prometheus HELP lines and
markdown table cells at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from zmix.looploss import LOOP_WINDOW


class Kind(enum.Enum):
    """What a number is: a running total since the node started, or a level now."""

    COUNTER = "counter"  # only grows while the node runs; starts at 0 with the process
    GAUGE = "gauge"  # goes up and down: a size, a count of things now, a median, an id


class Reported(enum.Enum):
    """Which nodes report a statistic, and from when."""

    ALWAYS = "every node"
    PROVIDERS = "providers"
    AFTER_LOOP = "every node, once a mix loop returned"  # a median of nothing is not 0


@dataclass(frozen=True, slots=True)
class Statistic:
    """One statistic: its name in the snapshot, its kind, its meaning and who reports it."""

    name: str
    kind: Kind
    help: str
    reported: Reported = Reported.ALWAYS

    @property
    def prometheus_name(self) -> str:
        """Return the name of its Prometheus sample: ``zmix_<name>``, and counters end in
        ``_total`` (``dropped_total`` already does, so it is ``zmix_dropped_total``)."""
        return prometheus_name(self.name, self.kind)


def prometheus_name(name: str, kind: Kind) -> str:
    """Return the Prometheus sample name of statistic ``name`` of ``kind``."""
    exported = f"zmix_{name}"
    if kind is Kind.COUNTER and not exported.endswith("_total"):
        exported += "_total"
    return exported


C, G = Kind.COUNTER, Kind.GAUGE
P, L = Reported.PROVIDERS, Reported.AFTER_LOOP

STATISTICS: tuple[Statistic, ...] = (
    # ---------------------------------------------------------------- traffic
    Statistic("received", C, "packets received (a PACKETS frame counts each of its packets)"),
    Statistic("forwarded", C, "packets scheduled to a next hop"),
    Statistic("sent", C, "packets sent on outbound links (forwarded packets, "
              "acknowledgements, loops, relays, each counted whether alone in a PACKET or in a "
              "PACKETS frame; heartbeats not counted)"),
    Statistic("heartbeats_received", C, "HEARTBEAT frames received from peers"),
    Statistic("delivered", C, "final deliveries handed to the mailbox logic (providers only; "
              "the node's own returning loops are not counted here)"),
    Statistic("replies", C, "SURB replies handed to the mailbox logic (providers only)"),
    Statistic("client_frames", C, "frames other than packets and heartbeats from this "
              "provider's clients: fetches (which carry the acknowledgements), relays, "
              "registrations (any other kind is also dropped as bad_frame)"),
    Statistic("relayed", C, "answers through a reply block (RELAY frames) that clients of this "
              "provider handed over to be passed on to the reply block's first hop (one whose "
              "first hop is not a node of the topology also counts in link_send_failed)"),
    Statistic("loops_sent", C, "the node's own mix loops sent (Loopix lambda_M)"),
    Statistic("loops_returned", C, "the node's own mix loops that came back"),
    Statistic("loops_lost", C, "the node's own mix loops not back by their deadline (the sum "
              "of the delays drawn for their hops plus 2 s), counted lost then; "
              "docs/monitoring.md, Loop loss per segment"),
    Statistic("loops_late", C, "the node's own mix loops that came back after they were "
              "counted lost (also in loops_lost, not in loops_returned)"),
    Statistic("loops_in_flight", G, "the node's own mix loops sent and neither back nor lost "
              "yet"),
    Statistic("loops_unbuilt", C, "the node's own mix loops not sent because the network "
              "document in use has no Sphinx key of a hop for the epoch it would process the "
              "loop in (the document expired and no newer one came from the authorities)"),
    Statistic("link_send_failed", C, "packets a link refused: its queue was full (50,000 "
              "frames), it held 50,000 packets already while without a connection, or the "
              "next hop is no node of the topology"),
    Statistic("link_disconnects", C, "connections of outbound links that were lost after their "
              "handshake (the next hop stalled past the 5 s heartbeat timeout, closed the "
              "connection, restarted or became unreachable); each is re-dialled at once, and the "
              "frames in flight on it (in libzmq's and the kernel's buffers) may be lost with it, "
              "uncounted"),
    Statistic("link_handshakes", C, "connections of outbound links that completed their CURVE "
              "handshake: one per link at first, then one per re-dial that got through"),
    Statistic("link_handshakes_failed", C, "connection attempts on outbound links whose "
              "handshake failed: refused by the next hop (this node's key not admitted there; "
              "the link is dialled anew after a backoff of 1 to 30 s), or not finished within "
              "5 s (the next hop stalled or unreachable; tried again)"),
    Statistic("link_queued_while_down", C, "packets and HEARTBEATs queued on an outbound "
              "link after its connection was lost and before the re-dialled one was up; they wait "
              "on the link (up to 50,000 packets; packets past that are refused, as "
              "link_send_failed) and go out once it is, unless the link stays down for "
              "loopix.max_delay (then they are dropped: dropped_link_down)"),
    Statistic("link_frames_discarded", C, "frames a next hop sent back on an outbound link "
              "(nothing legitimate comes back on one): read and discarded, so that they cannot "
              "stall the link"),
    Statistic("links_down", G, "outbound links with no connection up now: lost and not yet "
              "re-dialled, or not yet connected"),
    # ---------------------------------------------------------------- drops by reason
    Statistic("dropped_wrong_size", C, "packets or frames of the wrong length"),
    Statistic("dropped_bad_version", C, "packets or frames of an unknown version"),
    Statistic("dropped_bad_point", C, "packets whose group element is not a valid public key"),
    Statistic("dropped_bad_mac", C, "packets whose header MAC does not verify"),
    Statistic("dropped_bad_tag", C, "packets whose payload tag does not check at the end of "
              "their route"),
    Statistic("dropped_bad_command", C, "packets whose routing command does not parse"),
    Statistic("dropped_replay", C, "packets whose replay tag was seen before"),
    Statistic("dropped_queue_full", C, "packets refused because the delay queue was full"),
    Statistic("dropped_unknown_next_hop", C, "packets whose next hop is not another node of "
              "the topology"),
    Statistic("dropped_delay_too_long", C, "packets whose delay exceeds loopix.max_delay"),
    Statistic("dropped_bad_frame", C, "link frames that do not parse or are not allowed here"),
    Statistic("dropped_unexpected_delivery", C, "final deliveries and SURB replies for a "
              "recipient this node does not serve (a mixnode serves none; a provider, its "
              "clients)"),
    Statistic("dropped_unknown_peer", C, "frames from a link whose key is not (or no longer) "
              "admitted, other than registrations"),
    Statistic("dropped_mailbox_full", C, "messages and SURB replies refused because the "
              "recipient's mailbox holds mailbox.quota items (providers)"),
    Statistic("dropped_shutdown", C, "packets still in the delay queue when the node stopped "
              "without node.drain_on_shutdown"),
    Statistic("dropped_worker_lost", C, "packets held by a worker that died"),
    Statistic("dropped_link_down", C, "packets dropped with an outbound link that had no "
              "connection for loopix.max_delay seconds (its next hop unreachable, stalled or "
              "refusing this node): the link is closed with the packets queued on it since it "
              "was last up, and the next packet for that hop dials it anew (also counted in "
              "sent, when they were queued)"),
    Statistic("dropped_total", C, "the sum of every dropped_ statistic above"),
    # ---------------------------------------------------------------- links and errors
    Statistic("auth_denied", C, "CURVE handshakes refused (keys not in the topology)"),
    Statistic("auth_unregistered", C, "(providers with open registration) handshakes of "
              "unknown keys let in to register; their other frames count as dropped_unknown_peer"),
    Statistic("auth_throttled", C, "(providers with open registration) handshakes of unknown "
              "keys refused because more than 20 came at once or more than 1 a second after that"),
    Statistic("internal_errors", C, "unexpected errors the node loop caught and survived: the "
              "frame or packet being handled is dropped, a failing timer step (a mix loop, "
              "heartbeats, statistics, expiry) waits for its next turn (a bug: the traceback is "
              "in node.log)"),
    Statistic("peers_alive", G, "peers heard from (any frame) in the last 5 s"),
    Statistic("clients_online", G, "this provider's clients heard from (any frame, a fetch "
              "most often) in the last 5 s, or in the last 3 loopix.fetch_interval if that is "
              "longer", P),
    # ---------------------------------------------------------------- the node loop
    Statistic("queue_depth", G, "packets in the delay queue now"),
    Statistic("queue_high_water", G, "the most packets the delay queue held at once"),
    Statistic("in_flight", G, "packets with the workers, or read and waiting for one"),
    Statistic("loop_wakeups", C, "turns of the node loop; under load one turn handles several "
              "packets, idle it wakes at least every 100 ms"),
    Statistic("workers", G, "worker processes running"),
    Statistic("worker_restarts", C, "workers that died and were started again"),
    Statistic("worker_utilisation", G, "the workers' CPU share (0 to 1) over the last refresh"),
    Statistic("worker_processed", C, "packets the workers processed"),
    Statistic("cpu_seconds_workers", C, "CPU seconds used by the workers (dead ones included)"),
    Statistic("cpu_seconds_workers_sphinx", C, "the part of cpu_seconds_workers spent in "
              "process_packet; the rest is the workers' messaging and upkeep"),
    Statistic("cpu_seconds_node", C, "CPU seconds used by the node process (all its threads)"),
    Statistic("uptime_seconds", G, "seconds since the node process started"),
    Statistic("pid", G, "the node process's id"),
    # ---------------------------------------------------------------- keys and documents
    Statistic("epoch", G, "the key epoch the node's clock is in (docs/pki.md)"),
    Statistic("document_epoch", G, "the epoch of the network document the node works with"),
    Statistic("document_valid_seconds", G, "seconds until the network document in use expires "
              "(negative once it has: no newer one came from the authorities)"),
    Statistic("sphinx_keys_accepted", G, "Sphinx keys the workers try on a packet now (2, or 3 "
              "during the grace after an epoch's start)"),
    Statistic("sphinx_keys_made", C, "Sphinx key pairs made by this process (one per epoch, "
              "ahead of it)"),
    Statistic("sphinx_keys_erased", C, "Sphinx private keys erased by this process (at their "
              "epoch's end plus the grace), with their replay filters"),
    # ---------------------------------------------------------------- replay cache
    Statistic("replay_checked", C, "replay tags checked"),
    Statistic("replay_replays", C, "replay tags found already seen"),
    Statistic("replay_stale_epoch", C, "tags refused because their key epoch is no longer kept"),
    Statistic("replay_rollovers", C, "times an epoch's filter filled up and a new one took over"),
    Statistic("replay_tags", G, "replay tags held now, over the live epochs"),
    Statistic("replay_epochs", G, "key epochs whose tags are held now"),
    Statistic("replay_bytes", G, "memory held by the replay filters, in bytes"),
    Statistic("replay_flushes", C, "times the replay filter files were synced to disk (msync)"),
    # ---------------------------------------------------------------- mix loop latency
    Statistic("loop_rtt_us_median", G, "round trip of the node's own mix loops in microseconds, "
              "median over the last 1,000 loops", L),
    Statistic("loop_per_hop_us_median", G, "the same round trip divided by the loop's hops, "
              "median over the last 1,000 loops", L),
    # ---------------------------------------------------------------- provider core
    Statistic("provider_drops_received", C, "drop cover packets addressed to this provider, "
              "discarded", P),
    Statistic("provider_unexpected_delivery", C, "final deliveries and SURB replies for a "
              "recipient that is not one of this provider's clients (also in "
              "dropped_unexpected_delivery)", P),
    Statistic("provider_bad_envelope", C, "deliveries whose payload is not a zmix envelope", P),
    Statistic("provider_messages_stored", C, "messages stored in a mailbox", P),
    Statistic("provider_replies_stored", C, "SURB replies stored in a mailbox", P),
    Statistic("provider_refused_full", C, "messages and SURB replies refused because the "
              "recipient's mailbox is full, never an old one dropped (also in "
              "dropped_mailbox_full)", P),
    Statistic("provider_store_failed", C, "storage errors (the disk); no acknowledgement leaves "
              "for a message that was not stored", P),
    Statistic("provider_acks_sent", C, "delivery acknowledgements sent, each after its message "
              "was on disk", P),
    Statistic("provider_bad_ack_surb", C, "acknowledgement SURBs that could not be used "
              "(malformed, or dated for an epoch after the next one)", P),
    Statistic("provider_ack_surb_expired", C, "acknowledgements not sent because the keys of "
              "their SURB had expired (docs/client.md, Reply blocks and epochs)", P),
    Statistic("provider_registered", C, "clients admitted at run time", P),
    Statistic("provider_registration_refused", C, "REGISTER frames refused (docs/protocol.md "
              "lists the codes)", P),
    Statistic("provider_fetches", C, "FETCH frames answered", P),
    Statistic("provider_fetch_refused", C, "FETCH frames refused (not this provider's client)",
              P),
    # ---------------------------------------------------------------- mailbox store
    Statistic("mailbox_stored", C, "items written to the mailbox store", P),
    Statistic("mailbox_fetched", C, "items handed out to fetches", P),
    Statistic("mailbox_acked", C, "items deleted on their client's acknowledgement", P),
    Statistic("mailbox_expired", C, "items deleted unfetched after mailbox.ttl", P),
    Statistic("mailbox_refused_full", C, "items refused over mailbox.quota", P),
    Statistic("mailbox_foreign_ack_ignored", C, "acknowledged item ids that belong to another "
              "client, ignored", P),
    Statistic("mailbox_ack_unknown", C, "acknowledged item ids already gone (a repeated "
              "acknowledgement)", P),
    Statistic("mailbox_items", G, "items held in the mailbox store now", P),
)

BY_NAME: dict[str, Statistic] = {s.name: s for s in STATISTICS}


@dataclass(frozen=True, slots=True)
class LabelledStatistic:
    """A statistic with one value per value of a label (a route, a peer), besides the node's
    name: served by the control socket's ``labelled`` request and exported to Prometheus with
    the labels ``node`` and :attr:`label`. A label value that no longer occurs is not reported
    (a route no loop took in the window has no sample, not a 0)."""

    name: str
    kind: Kind
    label: str
    help: str
    reported: Reported = Reported.ALWAYS

    @property
    def prometheus_name(self) -> str:
        """Return the name of its Prometheus samples, as :attr:`Statistic.prometheus_name`."""
        return prometheus_name(self.name, self.kind)


LOOP_WINDOW_HELP = f"in the last {LOOP_WINDOW:.0f} s"

LABELLED_STATISTICS: tuple[LabelledStatistic, ...] = (
    LabelledStatistic("loop_route_returned", G, "route", "the node's own mix loops that came "
                      "back, per route, " + LOOP_WINDOW_HELP + " (the route is the names of "
                      "the nodes it went through joined by >, from this node back to it)"),
    LabelledStatistic("loop_route_lost", G, "route", "the node's own mix loops counted lost "
                      "(loops_lost), per route, " + LOOP_WINDOW_HELP),
    LabelledStatistic("link_packets_sent", C, "peer", "packets sent on the outbound link "
                      "to node peer (forwarded packets, acknowledgements, loops, relays; "
                      "heartbeats not counted): their sum is sent"),
)

LABELLED_BY_NAME: dict[str, LabelledStatistic] = {s.name: s for s in LABELLED_STATISTICS}


def expected_names(*, provider: bool, loop_returned: bool) -> frozenset[str]:
    """Return the names a node reports: a provider's or a mixnode's, before or after one of
    its mix loops came back."""
    wanted = {Reported.ALWAYS}
    if provider:
        wanted.add(Reported.PROVIDERS)
    if loop_returned:
        wanted.add(Reported.AFTER_LOOP)
    return frozenset(s.name for s in STATISTICS if s.reported in wanted)


TABLE_HEADER = ("| name | kind | reported by | meaning |", "|---|---|---|---|")


def table_row(statistic: Statistic) -> str:
    """Return the statistic's row of the table in docs/operations.md."""
    s = statistic
    return f"| `{s.name}` | {s.kind.value} | {s.reported.value} | {s.help} |"


def markdown_table(statistics: Iterable[Statistic] = STATISTICS) -> str:
    """Return the table of docs/operations.md's "Statistics" section, one row per statistic."""
    return "\n".join([*TABLE_HEADER, *(table_row(s) for s in statistics)]) + "\n"


LABELLED_TABLE_HEADER = ("| name | kind | label | reported by | meaning |",
                         "|---|---|---|---|---|")


def labelled_markdown_table(
        statistics: Iterable[LabelledStatistic] = LABELLED_STATISTICS) -> str:
    """Return the table of docs/operations.md's labelled statistics, one row per statistic."""
    rows = [f"| `{s.name}` | {s.kind.value} | `{s.label}` | {s.reported.value} | {s.help} |"
            for s in statistics]
    return "\n".join([*LABELLED_TABLE_HEADER, *rows]) + "\n"



# ==================================================================== the client
# A client's statistics (docs/client.md's table; ``python -m zmix.stats_schema client`` prints it).
# Counters run from when the client went online (its core was made), not over the life of its store.


class ClientPart(enum.Enum):
    """Which part of a client reports a statistic."""

    CORE = "ClientCore"  # ClientCore.statistics(), and so ClientRuntime.statistics() too
    RUNTIME = "ClientRuntime"  # added by ClientRuntime.statistics()
    DAEMON = "Daemon"  # added by the client daemon (zmix-client; docs/api.md)
    API = "ApiServer"  # the daemon's local API (docs/api.md)


@dataclass(frozen=True, slots=True)
class ClientStatistic:
    """One statistic of a client: its name, its kind, its meaning and which part reports it."""

    name: str
    kind: Kind
    help: str
    part: ClientPart


CORE, RUNTIME = ClientPart.CORE, ClientPart.RUNTIME

CLIENT_STATISTICS: tuple[ClientStatistic, ...] = (
    # ---------------------------------------------------------------- sending
    ClientStatistic("messages_submitted", C, "messages queued by submit (replies not counted)",
                    CORE),
    ClientStatistic("real_sent", C, "packets sent carrying a fragment of a message, "
                    "retransmissions included", CORE),
    ClientStatistic("retransmissions", C, "fragments sent again because their acknowledgement "
                    "was overdue (also in real_sent)", CORE),
    ClientStatistic("acks_received", C, "valid acknowledgements of the client's fragments "
                    "fetched, duplicate ones included", CORE),
    ClientStatistic("duplicate_acks", C, "acknowledgements of a fragment already acknowledged "
                    "(the ack of an earlier send came back too)", CORE),
    ClientStatistic("messages_failed", C, "messages given up: one of their fragments was sent 8 "
                    "times without an acknowledgement", CORE),
    ClientStatistic("loops_sent", C, "loop packets sent to the client itself (Loopix lambda_L)",
                    CORE),
    ClientStatistic("loops_returned", C, "the client's own loops that came back by their "
                    "deadline, or sent by an earlier run of the client and came back", CORE),
    ClientStatistic("loops_lost", C, "the client's own loops not back by their deadline (the "
                    "delays drawn for their hops, plus a fetch interval, plus 2 s)", CORE),
    ClientStatistic("loops_late", C, "loops counted lost that came back later (also in "
                    "loops_lost, not in loops_returned)", CORE),
    ClientStatistic("unknown_loops", C, "loops that came back with an id not outstanding "
                    "(already returned, or expired)", CORE),
    ClientStatistic("drops_sent", C, "drop cover packets sent: the drop stream (Loopix "
                    "lambda_D) and payload stream events with nothing queued", CORE),
    ClientStatistic("replies_sent", C, "replies sent through a reply block of a received "
                    "message", CORE),
    ClientStatistic("reply_blocks_expired", C, "reply blocks dropped because their keys had "
                    "expired: met when replying, or a queued reply's block expired before it "
                    "left (that reply fails)", CORE),
    ClientStatistic("reply_blocks_invalid", C, "reply blocks dropped when replying because they "
                    "do not parse or are dated after the next epoch", CORE),
    ClientStatistic("packets_unbuilt", C, "stream events (payload, loop or drop) that sent "
                    "nothing because some layer had no node with a Sphinx key for an epoch the "
                    "packet would meet (the network document in use does not cover it); a "
                    "fragment waiting for that event stays first in the queue", CORE),
    # ---------------------------------------------------------------- receiving
    ClientStatistic("messages_received", C, "messages reassembled and put in the inbox, replies "
                    "included", CORE),
    ClientStatistic("duplicates_dropped", C, "fragments already held, or of a message already "
                    "completed, dropped", CORE),
    ClientStatistic("inconsistent_fragments", C, "fragments whose count, total length or sender "
                    "disagree with what the first fragment of their message said, dropped", CORE),
    ClientStatistic("undecryptable", C, "fetched items that do not open or parse (an "
                    "acknowledgement that is not one, a reply of more than one fragment too)",
                    CORE),
    ClientStatistic("unknown_sender", C, "signed fragments whose sender id is not a client the "
                    "client knows, dropped", CORE),
    ClientStatistic("unknown_surb", C, "answers to a SURB id the client does not hold (used, "
                    "expired, or not its own), dropped", CORE),
    ClientStatistic("bad_reassembly", C, "completed messages whose length disagrees with the "
                    "announced total, discarded", CORE),
    ClientStatistic("expired", C, "store entries removed by the expiry sweep (old SURB keys, "
                    "loops, partial messages, reply blocks, completed ids)", CORE),
    ClientStatistic("queued", G, "fragments and replies waiting for the payload stream now",
                    CORE),
    ClientStatistic("in_flight", G, "fragments sent and awaiting their acknowledgement now",
                    CORE),
    # ---------------------------------------------------------------- the link to the provider
    ClientStatistic("fetches_sent", C, "FETCH frames sent (repeated ones and the last one "
                    "going offline included)", RUNTIME),
    ClientStatistic("fetch_answers", C, "answers to the awaited FETCH taken in", RUNTIME),
    ClientStatistic("fetch_unacknowledged", G, "fetched items taken in and not yet "
                    "acknowledged to the provider (the next FETCH lists them)", RUNTIME),
    ClientStatistic("frames_ignored", C, "frames from the provider that parse but answer "
                    "nothing awaited (a late answer to a repeated FETCH), ignored", RUNTIME),
    ClientStatistic("bad_frames", C, "frames from the provider that do not parse, dropped",
                    RUNTIME),
    ClientStatistic("provider_errors", C, "ERROR frames from the provider (a refused request; "
                    "its text is in the log)", RUNTIME),
    ClientStatistic("link_full", C, "packets not sent because the link to the provider was "
                    "full", RUNTIME),
)

CLIENT_BY_NAME: dict[str, ClientStatistic] = {s.name: s for s in CLIENT_STATISTICS}

DAEMON, API = ClientPart.DAEMON, ClientPart.API

# What a client daemon adds to its client's statistics (the API's status op; docs/api.md's
# table, ``python -m zmix.stats_schema daemon`` prints it). Tunnel services add their own
# (docs/tunnel.md).
DAEMON_STATISTICS: tuple[ClientStatistic, ...] = (
    ClientStatistic("inbox", G, "received messages no API caller acknowledged yet", DAEMON),
    ClientStatistic("messages_for_callers", C, "messages that arrived and were not a "
                    "service's own (pushed to subscribers, kept in the inbox)", DAEMON),
    ClientStatistic("api_connections", C, "API connections accepted (refused ones included)",
                    API),
    ClientStatistic("api_connections_open", G, "API connections open now", API),
    ClientStatistic("subscribers", G, "API connections subscribed to events now", API),
    ClientStatistic("api_requests", C, "requests that parsed as JSON objects", API),
    ClientStatistic("api_errors", C, "answers with ok false (every error code of docs/api.md)",
                    API),
    ClientStatistic("api_refused", C, "connections or requests refused as unauthorized (another "
                    "user, no token) or busy (too many connections)", API),
    ClientStatistic("api_bad_frames", C, "frames refused as bad_frame, too_large or bad_json",
                    API),
    ClientStatistic("api_slow_closed", C, "connections closed because they left more than 64 "
                    "MiB of answers and events unread", API),
    ClientStatistic("events_sent", C, "events queued for subscribers", API),
)


def client_names(*, runtime: bool) -> tuple[str, ...]:
    """Return the names a client reports, in table order: ``ClientCore.statistics()``'s, or with
    ``runtime`` ``ClientRuntime.statistics()``'s (the core's and the runtime's own)."""
    return tuple(s.name for s in CLIENT_STATISTICS if runtime or s.part is ClientPart.CORE)


CLIENT_TABLE_HEADER = ("| name | kind | reported by | meaning |", "|---|---|---|---|")


def client_table_row(statistic: ClientStatistic) -> str:
    """Return the statistic's row of the table in docs/client.md."""
    s = statistic
    return f"| `{s.name}` | {s.kind.value} | `{s.part.value}` | {s.help} |"


def client_markdown_table(statistics: Iterable[ClientStatistic] = CLIENT_STATISTICS) -> str:
    """Return the table of docs/client.md's "Statistics" section, one row per statistic."""
    return "\n".join([*CLIENT_TABLE_HEADER, *(client_table_row(s) for s in statistics)]) + "\n"


if __name__ == "__main__":
    import sys

    tables = {"client": client_markdown_table, "daemon": lambda: client_markdown_table(
        DAEMON_STATISTICS), "labelled": labelled_markdown_table}
    print(tables.get(sys.argv[1] if sys.argv[1:] else "", markdown_table)(), end="")
