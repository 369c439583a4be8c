"""The key schedule (zmix/epochs.py): epochs, accepted keys, erasure, senders' choices."""

from __future__ import annotations

import pytest

from zmix.epochs import EpochParams
from zmix.errors import LocalMisuse

P = EpochParams(length=100.0, origin=1000.0, grace=10.0, ahead=2)


def test_an_epoch_covers_its_start_but_not_its_end() -> None:
    assert P.epoch_at(1000.0) == 0
    assert P.epoch_at(1099.999) == 0
    assert P.epoch_at(1100.0) == 1
    assert P.epoch_at(999.0) == -1
    assert (P.start(3), P.end(3), P.erase_at(3)) == (1300.0, 1400.0, 1410.0)


def test_the_document_of_an_epoch_is_frozen_half_an_epoch_before_it_starts() -> None:
    assert P.vote_time(3) == 1250.0


def test_the_previous_key_is_accepted_only_during_the_grace_after_a_boundary() -> None:
    assert P.accepted(1205.0) == (2, 3, 1)
    assert P.accepted(1210.0) == (2, 3)
    assert P.accepted(1289.999) == (2, 3)


def test_the_key_after_next_is_accepted_only_during_the_grace_before_a_boundary() -> None:
    assert P.accepted(1290.0) == (2, 3, 4)
    assert P.accepted(1299.999) == (2, 3, 4)
    assert P.accepted(1300.0) == (3, 4, 2)


def test_a_key_is_tried_from_the_grace_before_the_last_epoch_to_the_grace_after_its_own() -> None:
    tried = [t for t in range(1000, 1500) if 3 in P.accepted(float(t))]
    assert (tried[0], tried[-1]) == (1190, 1409)  # start(2) - grace .. end(3) + grace


def test_a_key_is_erased_at_its_epochs_end_plus_the_grace() -> None:
    assert not P.expired(1, 1209.999)
    assert P.expired(1, 1210.0)
    assert 1 in P.accepted(1209.999) and 1 not in P.accepted(1210.0)


def test_the_keys_held_are_the_current_epochs_and_those_ahead() -> None:
    assert list(P.wanted(1250.0)) == [2, 3, 4]


def test_the_next_change_is_each_end_of_a_grace_and_each_boundary() -> None:
    assert P.next_change(1200.0) == 1210.0
    assert P.next_change(1210.0) == 1290.0
    assert P.next_change(1250.0) == 1290.0
    assert P.next_change(1290.0) == 1300.0
    t = 1000.0
    seen = []
    for _ in range(6):
        t = P.next_change(t)
        seen.append(t)
    assert seen == [1010.0, 1090.0, 1100.0, 1110.0, 1190.0, 1200.0]
    # Between two changes the answers do not change.
    for start, end in zip([1000.0, *seen], seen, strict=False):
        assert P.accepted(start) == P.accepted(end - 0.001)


def test_each_hop_uses_the_epoch_it_will_process_the_packet_in() -> None:
    # Sent 2 s before a boundary; the first two hops hold it 1.5 s each.
    assert P.hop_epochs(1098.0, [1_500_000, 1_500_000, 0]) == [0, 0, 1]
    assert P.hop_epochs(1050.0, [0, 0, 0]) == [0, 0, 0]


def test_a_reply_block_uses_the_next_epoch_and_lives_until_its_keys_are_erased() -> None:
    assert P.surb_epoch(1050.0) == 1
    assert P.surb_expiry(1050.0) == 1210.0
    # Made just after a boundary it lives almost two epochs; just before, a little over one.
    assert P.surb_expiry(1100.0) - 1100.0 == pytest.approx(210.0)
    assert P.surb_expiry(1199.0) - 1199.0 == pytest.approx(111.0)


@pytest.mark.parametrize("kwargs", [
    {"length": 0.5}, {"length": float("inf")}, {"grace": 50.0}, {"grace": -1.0},
    {"ahead": 0}, {"ahead": True}, {"origin": float("nan")},
])
def test_a_schedule_that_cannot_work_is_refused(kwargs: dict[str, float]) -> None:
    base = {"length": 100.0, "grace": 10.0}
    EpochParams(**base)  # the positive control
    with pytest.raises(LocalMisuse):
        EpochParams(**{**base, **kwargs})
