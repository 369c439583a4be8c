"""zmix: a Loopix mixnet with Sphinx packets on ZeroMQ."""

__version__ = "0.1.0"
