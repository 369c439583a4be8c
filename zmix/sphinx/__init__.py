"""The Sphinx packet format: one construction, wire profiles ``v1`` (the default) and ``kem1``
(one X25519 a hop), and ``smc0`` (tests only); ``SphinxParams.profile`` chooses.

See docs/sphinx.md for the byte layout and docs/architecture.md for how nodes and clients use it.
"""

from zmix.sphinx.packet import (
    MAX_DELAY_US,
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
    process_packet,
    process_packet_keys,
)
from zmix.sphinx.params import WIRE_PROFILES, Profile, SphinxParams

__all__ = [
    "MAX_DELAY_US",
    "WIRE_PROFILES",
    "FinalDelivery",
    "ForwardHop",
    "Hop",
    "Profile",
    "SphinxParams",
    "Surb",
    "SurbKeys",
    "SurbReply",
    "answer_surb",
    "create_forward_packet",
    "create_surb",
    "open_surb_reply",
    "process_packet",
    "process_packet_keys",
]
