"""Layer 2, peers: the authenticated WebSocket links between nodes. The wire format, the handshake,
a link (framing, requests, heartbeat), a supervisor per peer that dials and redials with backoff,
and the listener accepting inbound peers. Knows nothing of routes or MCP."""
