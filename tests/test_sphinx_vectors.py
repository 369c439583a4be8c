"""The smc0 profile reproduces every third-party vector; v1 and kem1 reproduce our published
vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zmix import crypto
from zmix.sphinx import (
    FinalDelivery,
    ForwardHop,
    Hop,
    Profile,
    SphinxParams,
    Surb,
    SurbKeys,
    SurbReply,
    answer_surb,
    create_forward_packet,
    create_surb,
    lioness,
    open_surb_reply,
    process_packet,
)
from zmix.sphinx.profiles import SMC0
from zmix.sphinx.vectors import SeededRandom, generate

VECTORS = Path(__file__).parent / "vectors"
SMC = json.loads((VECTORS / "sphinxmixcrypto.json").read_text())
SMC0_PARAMS = SphinxParams(max_hops=5, payload_length=1024, profile=Profile.SMC0)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_the_smc0_geometry_matches_the_vectors() -> None:
    assert SMC0_PARAMS.packet_length == 1248
    assert SMC0_PARAMS.beta_length == 176


def test_x25519_base_with_clamping_matches() -> None:
    v = SMC["primitives"]["x25519_base"]
    assert crypto.x25519_base(crypto.clamp(h(v["scalar_before_clamp"]))) == h(v["want"])


def test_the_smc0_key_derivations_match() -> None:
    p = SMC["primitives"]
    assert SMC0.blinding(h(p["blinding_factor"]["alpha"]), h(p["blinding_factor"]["s"])) == h(
        p["blinding_factor"]["want"])
    assert SMC0.stream_key(h(p["stream_key"]["s"])) == h(p["stream_key"]["want"])
    assert SMC0.payload_key(h(p["payload_key"]["s"])) == h(p["payload_key"]["want"])
    key = SMC0.mac_key(h(p["mac"]["s"]))
    assert key == h(p["mac"]["want_key"])
    # SMC0.mac covers beta only: it skips the 32-byte alpha in front of what it is given.
    assert SMC0.mac(key, bytes(32) + h(p["mac"]["data"])) == h(p["mac"]["want_mac"])


def test_lioness_matches_the_shared_vector_both_ways() -> None:
    v = SMC["lioness"]
    assert lioness.encrypt(h(v["key"]), h(v["plaintext"])) == h(v["ciphertext"])
    assert lioness.decrypt(h(v["key"]), h(v["ciphertext"])) == h(v["plaintext"])


def _walk_to(check: bytes, first: bytes, packet: bytes) -> tuple[bytes, object]:
    keys = {h(n["id"]): h(n["private_key"]) for n in SMC["nodes"]}
    hop, seen = first, None
    while True:
        if hop == check:
            seen = packet
        result = process_packet(SMC0_PARAMS, keys[hop], packet)
        if not isinstance(result, ForwardHop):
            assert seen is not None
            return seen, result
        hop, packet = result.next_hop, result.packet


def _route(ids: list[str]) -> list[Hop]:
    keys = {n["id"]: h(n["public_key"]) for n in SMC["nodes"]}
    return [Hop(h(i), keys[i]) for i in ids]


def _split(packet: bytes) -> dict[str, str]:
    return {"alpha": packet[:32].hex(), "beta": packet[32:208].hex(),
            "gamma": packet[208:224].hex(), "delta": packet[224:].hex()}


def test_the_smc0_forward_packet_matches_at_the_check_hop_and_delivers() -> None:
    v = SMC["forward"]
    message = v["message_utf8"].encode()
    packet = create_forward_packet(SMC0_PARAMS, _route(v["route"]), h(v["destination"]), message,
                                   SeededRandom(h(SMC["rng_seed"])))
    seen, result = _walk_to(h(v["check_at_hop"]), h(v["route"][0]), packet)
    assert _split(seen) == v["packet_arriving_at_check_hop"]
    assert isinstance(result, FinalDelivery)
    assert result.message == message and result.recipient == h(v["destination"])


def test_the_smc0_surb_reply_matches_at_the_check_hop_and_decrypts() -> None:
    v = SMC["surb"]
    surb, keys = create_surb(SMC0_PARAMS, _route(v["route"]), h(v["client_id"]),
                             h(v["message_id"]), SeededRandom(h(SMC["rng_seed"])))
    first, packet = answer_surb(SMC0_PARAMS, surb, h(v["reply_message_hex"]))
    seen, result = _walk_to(h(v["check_at_hop"]), first, packet)
    assert _split(seen) == v["packet_arriving_at_check_hop"]
    assert isinstance(result, SurbReply)
    assert result.recipient == h(v["client_id"]) and result.surb_id == h(v["message_id"])
    assert open_surb_reply(SMC0_PARAMS, keys, result.payload) == h(v["reply_message_hex"])


# Our own vectors, one file per wire profile (tests/vectors/README.md).
OURS = {p: json.loads((VECTORS / f"zmix_{p.value}.json").read_text())
        for p in (Profile.V1, Profile.KEM1)}
WIRE = pytest.mark.parametrize("profile", [Profile.V1, Profile.KEM1], ids=["v1", "kem1"])


@WIRE
def test_our_vectors_are_what_the_generator_produces(profile: Profile) -> None:
    assert generate(profile) == OURS[profile]
    assert OURS[profile]["profile"] == profile.value


def test_the_v1_and_kem1_vectors_share_their_nodes_and_nothing_else() -> None:
    v1, kem1 = OURS[Profile.V1], OURS[Profile.KEM1]
    assert v1["nodes"] == kem1["nodes"] and v1["seed"] == kem1["seed"]
    for case in ("forward_5", "forward_3", "surb"):
        assert v1[case]["route"] == kem1[case]["route"]
        assert v1[case]["hops"][0]["packet"] != kem1[case]["hops"][0]["packet"]
        assert v1[case]["hops"][0]["packet"][:2] == "01"
        assert kem1[case]["hops"][0]["packet"][:2] == "02"


@WIRE
@pytest.mark.parametrize("case", ["forward_5", "forward_3", "surb"])
def test_every_vector_hop_processes_to_the_published_next_packet(profile: Profile,
                                                                 case: str) -> None:
    vectors, params = OURS[profile], SphinxParams(profile=profile)
    keys = {n["id"]: h(n["private_key"]) for n in vectors["nodes"]}
    hops: list[dict[str, Any]] = vectors[case]["hops"]
    for current, following in zip(hops, [*hops[1:], None], strict=True):
        assert len(h(current["packet"])) == params.packet_length
        result = process_packet(params, keys[current["node"]], h(current["packet"]))
        assert result.replay_tag.hex() == current["replay_tag"]
        assert result.delay_us == current["delay_us"]
        if following is None:
            assert type(result).__name__ == current["result"]
        else:
            assert isinstance(result, ForwardHop)
            assert result.packet.hex() == following["packet"]
            assert result.next_hop.hex() == following["node"]


@WIRE
def test_the_surb_vector_opens_to_its_reply(profile: Profile) -> None:
    v, params = OURS[profile]["surb"], SphinxParams(profile=profile)
    assert Surb.from_bytes(params, h(v["surb"])).to_bytes() == h(v["surb"])
    keys = SurbKeys.from_bytes(h(v["keys"]))
    assert open_surb_reply(params, keys, h(v["hops"][-1]["payload"])) == h(v["reply"])


def _rng_at(profile: Profile, offset: int) -> Any:
    """docs/sphinx.md's rng, from the JSON alone: the seed's ChaCha20 keystream from ``offset``."""
    stream, position = crypto.chacha20_stream(h(OURS[profile]["seed"]), 65536), [offset]

    def rng(n: int) -> bytes:
        position[0] += n
        return stream[position[0] - n:position[0]]
    return rng


def _json_route(profile: Profile, case: dict[str, Any]) -> list[Hop]:
    public = {n["id"]: h(n["public_key"]) for n in OURS[profile]["nodes"]}
    return [Hop(h(i), public[i], d)
            for i, d in zip(case["route"], case["route_delays_us"], strict=True)]


@WIRE
def test_the_nodes_are_the_first_draws_of_the_seeded_stream(profile: Profile) -> None:
    rng = _rng_at(profile, 0)
    for node in OURS[profile]["nodes"]:
        private = crypto.clamp(rng(32))
        assert node["private_key"] == private.hex()
        assert node["public_key"] == crypto.x25519_base(private).hex()


@WIRE
@pytest.mark.parametrize("case", ["forward_5", "forward_3"])
def test_each_forward_vector_is_rebuilt_from_the_inputs_in_its_json(profile: Profile,
                                                                    case: str) -> None:
    vectors, params = OURS[profile], SphinxParams(profile=profile)
    v = vectors[case]
    packet = create_forward_packet(params, _json_route(profile, v), h(v["recipient"]),
                                   h(v["message"]), _rng_at(profile, v["rng_offset"]))
    assert packet.hex() == v["hops"][0]["packet"] and v["hops"][0]["node"] == v["route"][0]
    assert [hop["node"] for hop in v["hops"]] == v["route"]
    assert [hop["delay_us"] for hop in v["hops"]] == v["route_delays_us"]
    keys = {n["id"]: h(n["private_key"]) for n in vectors["nodes"]}
    final = process_packet(params, keys[v["route"][-1]], h(v["hops"][-1]["packet"]))
    assert isinstance(final, FinalDelivery)
    assert final.recipient.hex() == v["recipient"] and final.message.hex() == v["message"]


@WIRE
def test_the_surb_vector_is_rebuilt_from_the_inputs_in_its_json(profile: Profile) -> None:
    vectors, params = OURS[profile], SphinxParams(profile=profile)
    v = vectors["surb"]
    surb, keys = create_surb(params, _json_route(profile, v), h(v["recipient"]),
                             h(v["surb_id"]), _rng_at(profile, v["rng_offset"]))
    assert surb.to_bytes().hex() == v["surb"] and keys.to_bytes().hex() == v["keys"]
    first, packet = answer_surb(params, surb, h(v["reply"]))
    assert first.hex() == v["route"][0] and packet.hex() == v["hops"][0]["packet"]
    assert [hop["node"] for hop in v["hops"]] == v["route"]
    assert [hop["delay_us"] for hop in v["hops"]] == v["route_delays_us"]
    last = v["hops"][-1]
    private = {n["id"]: h(n["private_key"]) for n in vectors["nodes"]}[last["node"]]
    reply = process_packet(params, private, h(last["packet"]))
    assert isinstance(reply, SurbReply)
    assert reply.recipient.hex() == v["recipient"] and reply.surb_id.hex() == v["surb_id"]


def test_the_seeded_random_source_refuses_to_draw_past_its_keystream() -> None:
    rng = SeededRandom(bytes(32), size=64)
    assert rng(60) == crypto.chacha20_stream(bytes(32), 64)[:60] and rng.position == 60
    with pytest.raises(RuntimeError, match="ran out"):
        rng(5)
    assert rng(4) == crypto.chacha20_stream(bytes(32), 64)[60:]  # the last bytes are still there
