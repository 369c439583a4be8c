"""TCP tunnels over the mixnet (docs/tunnel.md)."""
