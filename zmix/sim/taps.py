"""Placeholder of the records (the adversary helper's module replaces it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transmission:
    t: float
    src: str
    dst: str
    xid: int
    parent: int


@dataclass(frozen=True, slots=True)
class Ending:
    t: float
    node: str
    xid: int


@dataclass(frozen=True, slots=True)
class Origin:
    xid: int
    kind: str
    sender: str
    recipient: str
    message: str


Record = Transmission | Ending | Origin
