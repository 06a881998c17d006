"""Test harness code shipped beside the production packages, never imported by them.

``testing.adversaries`` holds the cheating miner modes that the local network and the
end-to-end tests run against the validator; the miner finds them only through the
``gauntlet.miner_modes`` entry points (see ``miner.modes``).
"""
