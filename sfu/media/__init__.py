"""The media path: wire formats, peer connections and the packet forwarding objects."""
