"""Sphinx geometry: one frozen object that derives every length of a network's packets."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from zmix.errors import LocalMisuse

ID_BYTES = 16  # node, client and SURB ids
ALPHA_BYTES = 32  # alpha: the X25519 group element
GAMMA_BYTES = 16  # gamma: the header MAC
TAG_BYTES = 16  # zero tag at the start of a payload, checked after the last LIONESS layer
KEY_BYTES = 32  # a SURB's ktilde, a hop's shared secret

# v1 routing command slot: command (1) | id (16) | delay_us (4) | gamma or SURB id (16) | zero (3)
V1_SLOT_BYTES = 40
V1_LENGTH_BYTES = 4  # u32 message length after the tag
# kem1 routing command slot: v1's first 37 bytes | next alpha (32) | zero (3)
KEM1_SLOT_BYTES = 72

# Allowed geometry (docs/sphinx.md, "Geometry"). A payload must hold the 20-byte v1 head and more;
# 1 MiB and 32 hops bound the memory and the per-hop work a topology file can ask for.
MIN_HOPS, MAX_HOPS = 1, 32  # r
MIN_PAYLOAD, MAX_PAYLOAD = 64, 1 << 20  # P, bytes

# smc0: k = 16, routing slot 2k, beta (2r+1)k, P = 1024 (shared/vectors/README.md)
SMC0_K = 16


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Profile(enum.Enum):
    """Which Sphinx construction a network uses."""

    V1 = "v1"  # the zmix wire format (docs/sphinx.md)
    KEM1 = "kem1"  # the KEM wire format: one X25519 per hop, no blinding (docs/sphinx.md)
    SMC0 = "smc0"  # byte-exact with sphinxmixcrypto; tests only, never on the wire


# The profiles a network can run on, in the order they are listed and benchmarked; smc0 (tests
# only) is not one of them.
WIRE_PROFILES = (Profile.V1, Profile.KEM1)


@dataclass(frozen=True, slots=True)
class SphinxParams:
    """The geometry of every packet of one network: forward or reply, real or cover.

    ``max_hops`` (r) bounds a route's length; ``payload_length`` (P) is the LIONESS block.
    """

    max_hops: int = 5
    payload_length: int = 2048
    profile: Profile = Profile.V1
    # Derived once here, not on every use: the node loop and the workers read these per packet.
    slot_length: int = field(init=False, repr=False, compare=False)
    """Bytes one hop's routing command takes in beta (c)."""
    beta_length: int = field(init=False, repr=False, compare=False)
    """Bytes of the encrypted routing information."""
    stream_length: int = field(init=False, repr=False, compare=False)
    """Bytes of header keystream a hop uses: beta plus the slot it shifts in."""
    header_length: int = field(init=False, repr=False, compare=False)
    """Bytes of the header: [version] alpha beta gamma."""
    packet_length: int = field(init=False, repr=False, compare=False)
    """Bytes of every packet on the wire."""

    def __post_init__(self) -> None:
        if not _is_int(self.max_hops) or not MIN_HOPS <= self.max_hops <= MAX_HOPS:
            raise LocalMisuse(f"max_hops must be an integer {MIN_HOPS}..{MAX_HOPS}, "
                              f"got {self.max_hops!r}")
        payload = self.payload_length
        if not _is_int(payload) or not MIN_PAYLOAD <= payload <= MAX_PAYLOAD:
            raise LocalMisuse(f"payload_length must be an integer {MIN_PAYLOAD}..{MAX_PAYLOAD}, "
                              f"got {self.payload_length!r}")
        if not isinstance(self.profile, Profile):
            raise LocalMisuse(f"profile must be a Profile, got {self.profile!r}")
        if self.profile is Profile.SMC0 and self.payload_length > 65535:
            raise LocalMisuse("smc0 payloads are at most 65535 bytes")
        if self.profile is Profile.SMC0:
            slot, beta, version = 2 * SMC0_K, (2 * self.max_hops + 1) * SMC0_K, 0
        else:  # v1 and kem1: a version byte and r slots; kem1's carry the next alpha too
            slot = V1_SLOT_BYTES if self.profile is Profile.V1 else KEM1_SLOT_BYTES
            beta, version = self.max_hops * slot, 1
        header = version + ALPHA_BYTES + beta + GAMMA_BYTES
        for name, value in (("slot_length", slot), ("beta_length", beta),
                            ("stream_length", beta + slot), ("header_length", header),
                            ("packet_length", header + self.payload_length)):
            object.__setattr__(self, name, value)

    @property
    def max_message_length(self) -> int:
        """Bytes a forward packet can deliver."""
        if self.profile is not Profile.SMC0:  # v1 and kem1 share the body layout
            return self.payload_length - TAG_BYTES - V1_LENGTH_BYTES
        return self.payload_length - TAG_BYTES - 1 - ID_BYTES - 2

    @property
    def max_reply_length(self) -> int:
        """Bytes a SURB reply can carry."""
        if self.profile is not Profile.SMC0:
            return self.payload_length - TAG_BYTES - V1_LENGTH_BYTES
        return self.payload_length - TAG_BYTES - 2

    @property
    def surb_length(self) -> int:
        """Bytes of a serialised SURB: first hop id, header, ktilde."""
        return ID_BYTES + self.header_length + KEY_BYTES
