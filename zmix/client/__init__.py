"""The sans-IO Loopix client (docs/client.md): :class:`ClientCore` and its parts.

=============  ==========================================================================
``core``       :class:`ClientCore`, the facade the runtime and the tests drive
``streams``    :class:`PoissonStreams` (lambda_P, lambda_L, lambda_D), :class:`FetchSchedule`
``sending``    :class:`Sender`: queue, acks awaited (:class:`AckTimers`), retransmission
``receiving``  :class:`Receiver`: acks, SURB replies, loops, reassembly, inbox
``packets``    :class:`PacketMaker`: routes and delays (:mod:`zmix.routes`), SURBs, sealing
``results``    :class:`Outgoing`, :class:`ReceivedMessage`, :class:`SendProgress`
=============  ==========================================================================

Each loop's route and deadline are kept by :class:`zmix.looptrack.LoopRoutes`, which the nodes'
mix loops use too.
"""

from zmix.client.core import DAY, EXPIRY_INTERVAL, LONG_LIFETIME, ClientCore
from zmix.client.packets import NewLoop, NewSurb, PacketMaker
from zmix.client.receiving import Ack, Receiver, TakenIn
from zmix.client.results import Outgoing, ReceivedMessage, SendProgress
from zmix.client.sending import BACKOFF_CAP, MAX_ATTEMPTS, AckTimers, Sender
from zmix.client.streams import FETCH_RETRY, STALL_RESET, FetchSchedule, PoissonStreams, Stream
from zmix.looptrack import LOOP_SLACK, LoopRoutes, Return, loop_deadline

__all__ = [
    "BACKOFF_CAP", "DAY", "EXPIRY_INTERVAL", "FETCH_RETRY", "LONG_LIFETIME", "LOOP_SLACK",
    "MAX_ATTEMPTS", "STALL_RESET", "Ack", "AckTimers", "ClientCore", "FetchSchedule",
    "LoopRoutes", "NewLoop", "NewSurb", "Outgoing", "PacketMaker", "PoissonStreams",
    "ReceivedMessage", "Receiver", "Return", "SendProgress", "Sender", "Stream", "TakenIn",
    "loop_deadline",
]
