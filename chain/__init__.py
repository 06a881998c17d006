"""Chain access: one interface, the embedded local chain and the Bittensor backend.

Import the interface from here; the backends load lazily through :func:`open_chain`.
"""

from chain.base import Chain, ChainError, Metagraph
from chain.connect import open_chain

__all__ = ["Chain", "ChainError", "Metagraph", "open_chain"]
