"""Test harness code shipped beside the production packages, never imported by them.

* ``testing.run``: the real ``gauntlet`` command line with test hooks installed first
  (``--crash-at`` fault injection, ``--mode`` adversary miners);
* ``testing.faults``: the hooks behind ``protocol.faults.point`` (die like ``kill -9``);
* ``testing.adversaries`` / ``testing.modes``: the cheating miner modes that the local
  network and the end-to-end tests run against the validator, and their registry;
* ``testing.validator_sim``: an in-process network (chain, stores, hand-made uploads) for
  validator tests and benchmarks;
* ``testing.miner_sim``: an in-process simulation of several miners and the outer step.

``tests/unit/test_layering.py`` checks that protocol/, miner/, validator/, scoring/ and
chain/ never import this package and that the ``gauntlet`` console script does not load it
(only ``gauntlet localnet`` does, inside the command).
"""
