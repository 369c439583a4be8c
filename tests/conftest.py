"""The whole test run's options: ``--sphinx-profile`` runs every network the tests make (through
``zmix.bench.common.make_network``) on that Sphinx profile (docs/sphinx.md); .ci/run runs the
tests about packets a second time with ``--sphinx-profile kem1``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zmix.bench import common
from zmix.sphinx import WIRE_PROFILES, Profile


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--sphinx-profile", choices=[p.value for p in WIRE_PROFILES],
                     default=Profile.V1.value,
                     help="the Sphinx profile of the networks the tests make (default v1)")


@pytest.fixture(autouse=True)
def sphinx_profile(request: pytest.FixtureRequest) -> Iterator[Profile]:
    """The profile of this run's networks (``--sphinx-profile``), set for each test."""
    profile = Profile(request.config.getoption("--sphinx-profile"))
    saved = dict(common.DEFAULT_SPHINX)
    if profile is not Profile.V1:  # v1 is the topology's default: its files need not name it
        common.DEFAULT_SPHINX["profile"] = profile.value
    try:
        yield profile
    finally:
        common.DEFAULT_SPHINX.clear()
        common.DEFAULT_SPHINX.update(saved)
