"""The TCP tunnel over the mixnet (docs/tunnel.md): a SOCKS5 proxy and an exit, both services of
the client daemon.

Sans-IO parts: :mod:`zmix.tunnel.frames` (the tunnel's messages), :mod:`zmix.tunnel.stream` (one
circuit's reliable, ordered, flow-controlled byte stream and the reply-block accounting),
:mod:`zmix.tunnel.socks5` (the SOCKS5 handshake) and :mod:`zmix.tunnel.policy` (the exit's
allowlist). The sockets live in :mod:`zmix.runtime.tunnel`.
"""
