"""Layer 5, node: :func:`open_node` wires the layers below into one task tree; status, metrics and
configuration reload."""
