"""Example MCP servers shipped with fednode (no internet needed); run with ``python -m fednode.examples.X``."""
