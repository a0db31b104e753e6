"""Layer 4, MCP: the attached servers (processes or HTTP, their sessions and parked calls), and the
client-facing edges (Streamable HTTP and stdio) that hand requests to the federation."""
