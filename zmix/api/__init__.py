"""zmix's local API (docs/api.md): the frames, and thin clients of the client daemon."""
