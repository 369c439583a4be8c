"""The Sphinx operations a protocol core performs, gathered in one object.

Clients make packets and SURBs and open SURB replies; providers answer ack SURBs; nodes make
their mix-loop packets; workers strip layers. The cores take these operations as a
:class:`SphinxOps` (default :data:`SPHINX`, the real construction of this package) so that the
simulator (:mod:`zmix.sim`) can run the very same cores with a stand-in that keeps every packet's
size, route, delays and replay tags but does no cryptography (:mod:`zmix.sim.standin`). Nothing
on the wire ever uses anything but :data:`SPHINX`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zmix.sphinx.packet import (
    FinalDelivery,
    ForwardHop,
    Hop,
    Surb,
    SurbKeys,
    SurbReply,
    answer_surb,
    create_forward_packet,
    create_surb,
    open_surb_reply,
    process_packet_keys,
)
from zmix.sphinx.params import SphinxParams

RandomBytes = Callable[[int], bytes]
Result = ForwardHop | FinalDelivery | SurbReply


@dataclass(frozen=True, slots=True)
class SphinxOps:
    """One implementation of the five Sphinx operations, with the signatures of
    :func:`zmix.sphinx.create_forward_packet` and its siblings (arguments passed positionally)."""

    create_forward_packet: Callable[[SphinxParams, Sequence[Hop], bytes, bytes, RandomBytes],
                                    bytes]
    create_surb: Callable[[SphinxParams, Sequence[Hop], bytes, bytes, RandomBytes],
                          tuple[Surb, SurbKeys]]
    answer_surb: Callable[[SphinxParams, Surb, bytes], tuple[bytes, bytes]]
    open_surb_reply: Callable[[SphinxParams, SurbKeys, bytes], bytes]
    process_packet_keys: Callable[[SphinxParams, Sequence[tuple[int, bytes | bytearray]], bytes],
                                  tuple[int, Result]]


SPHINX = SphinxOps(create_forward_packet, create_surb, answer_surb, open_surb_reply,
                   process_packet_keys)
