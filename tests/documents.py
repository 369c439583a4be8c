"""A network document for tests of a runtime's other parts, made without authorities.

What the authorities would sign for the current epoch if every node of the topology uploaded a
descriptor whose Sphinx key, for every epoch, is its long-term key file's ``public_key`` (so a
test that opens packets with ``load_private(...).private_key`` can still do so).
"""

from __future__ import annotations

import time
from pathlib import Path

from zmix.keys import load_directory, load_identity_public
from zmix.pki import Document, NodeEntry
from zmix.topology import Topology


def document_for(topology: Topology, state: Path, now: float | None = None) -> Document:
    """Return the document of the epoch of ``now`` (default: the clock) for ``topology``."""
    epochs = topology.epoch
    epoch = epochs.epoch_at(time.time() if now is None else now)
    keys = load_directory(state, topology)
    entries = []
    for node in sorted(topology.nodes(), key=lambda n: n.name):
        public = keys[node.name]
        entries.append(NodeEntry(
            node.name, node.id, node.role.value, node.layer, node.host, node.port,
            public.curve_public, load_identity_public(state, node.name),
            tuple((e, public.public_key) for e in range(epoch, epoch + 3))))
    start = int(epochs.start(epoch))
    return Document(topology.network, epoch, start, start + int(epochs.length + epochs.grace),
                    int(epochs.length), int(epochs.origin), int(epochs.grace),
                    topology.sphinx.max_hops, topology.sphinx.payload_length, topology.loopix,
                    tuple(entries), topology.sphinx.profile)
