"""chjoin: an unprivileged, ch-run compatible container launcher whose ranks share one container.

This package is imported by every rank on every node, so it imports nothing at all: each module
imports only what its own path needs.
"""

__version__ = "0.1.0"
