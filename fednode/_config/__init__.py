"""Layer 1, configuration and auth: the node's settings (TOML read and checked by cattrs), the
tokens peers exchange (HS512 or EdDSA), signing and verifying what nodes state to each other
(route advertisements) with the same keys, and structured logging. Imports nothing else of fednode
but :mod:`fednode._errors`."""
