"""Layer 6, the ``fednode`` command line."""
