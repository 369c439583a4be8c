"""Sphinx geometry: one frozen object that derives every length of a network's packets."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zmix.errors import LocalMisuse

ID_BYTES = 16  # node, client and SURB ids
ALPHA_BYTES = 32  # alpha: the X25519 group element
GAMMA_BYTES = 16  # gamma: the header MAC
TAG_BYTES = 16  # zero tag at the start of a payload, checked after the last LIONESS layer
KEY_BYTES = 32  # a SURB's ktilde, a hop's shared secret

# v1 routing command slot: command (1) | id (16) | delay_us (4) | gamma or SURB id (16) | zero (3)
V1_SLOT_BYTES = 40
V1_LENGTH_BYTES = 4  # u32 message length after the tag

# smc0: k = 16, routing slot 2k, beta (2r+1)k, P = 1024 (shared/vectors/README.md)
SMC0_K = 16


class Profile(enum.Enum):
    """Which Sphinx construction a network uses."""

    V1 = "v1"  # the zmix wire format (docs/sphinx.md)
    SMC0 = "smc0"  # byte-exact with sphinxmixcrypto; tests only, never on the wire


@dataclass(frozen=True, slots=True)
class SphinxParams:
    """The geometry of every packet of one network: forward or reply, real or cover.

    ``max_hops`` (r) bounds a route's length; ``payload_length`` (P) is the LIONESS block.
    """

    max_hops: int = 5
    payload_length: int = 2048
    profile: Profile = Profile.V1

    def __post_init__(self) -> None:
        if not 1 <= self.max_hops <= 32:
            raise LocalMisuse(f"max_hops must be 1..32, got {self.max_hops}")
        if not 64 <= self.payload_length <= 1 << 20:
            raise LocalMisuse(f"payload_length must be 64..1048576, got {self.payload_length}")
        if self.profile is Profile.SMC0 and self.payload_length > 65535:
            raise LocalMisuse("smc0 payloads are at most 65535 bytes")

    @property
    def slot_length(self) -> int:
        """Bytes one hop's routing command takes in beta (c)."""
        return V1_SLOT_BYTES if self.profile is Profile.V1 else 2 * SMC0_K

    @property
    def beta_length(self) -> int:
        """Bytes of the encrypted routing information."""
        if self.profile is Profile.V1:
            return self.max_hops * V1_SLOT_BYTES
        return (2 * self.max_hops + 1) * SMC0_K

    @property
    def stream_length(self) -> int:
        """Bytes of header keystream a hop uses: beta plus the slot it shifts in."""
        return self.beta_length + self.slot_length

    @property
    def header_length(self) -> int:
        """Bytes of the header: [version] alpha beta gamma."""
        version = 1 if self.profile is Profile.V1 else 0
        return version + ALPHA_BYTES + self.beta_length + GAMMA_BYTES

    @property
    def packet_length(self) -> int:
        """Bytes of every packet on the wire."""
        return self.header_length + self.payload_length

    @property
    def max_message_length(self) -> int:
        """Bytes a forward packet can deliver."""
        if self.profile is Profile.V1:
            return self.payload_length - TAG_BYTES - V1_LENGTH_BYTES
        return self.payload_length - TAG_BYTES - 1 - ID_BYTES - 2

    @property
    def max_reply_length(self) -> int:
        """Bytes a SURB reply can carry."""
        if self.profile is Profile.V1:
            return self.payload_length - TAG_BYTES - V1_LENGTH_BYTES
        return self.payload_length - TAG_BYTES - 2

    @property
    def surb_length(self) -> int:
        """Bytes of a serialised SURB: first hop id, header, ktilde."""
        return ID_BYTES + self.header_length + KEY_BYTES
