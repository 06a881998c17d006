"""What miners and validators share: windows, data assignment, model, codec, wire format, storage, settings.

This package is the only contract between the other packages. It never imports from
``miner``, ``validator``, ``scoring`` or ``chain`` (a test enforces that direction).
"""
