"""Layer 3, federation: which MCP server is reachable where. The routing table (sans-I/O), the
proofs of route origins and paths (signed advertisements, verified hop by hop), the exposed catalog,
the advertiser sending each peer its delta, and forwarding requests hop by hop
to the owning node, which runs them on this node's attached servers through a small protocol
(:class:`fednode._federation._federation.LocalServers`) the MCP layer implements."""
