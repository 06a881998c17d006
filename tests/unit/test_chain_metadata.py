"""Every extrinsic and storage read of the Bittensor backend, encoded against a real subtensor's metadata.

The in-memory ``FakeSubstrate`` answers whatever it is asked, so a call the chain would reject
(a misspelt argument, a storage key of the wrong type, a pallet the runtime lacks) would pass
every other test. Here each call the backend composes through the SDK is SCALE-encoded with
the SDK's own runtime codec loaded from recorded metadata (subtensor spec 343, see
``tests/assets/subtensor/README.md``), exactly as the SDK's real ``Substrate.compose`` would,
and each storage read's key is built from that metadata, without a node.

Run: ``pytest tests/unit/test_chain_metadata.py -q``
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from bittensor._transport.codec import RuntimeCodec, strip_option_opaque_metadata
from bittensor.sp_core import Keypair

from chain.bittensor_chain import BittensorChain
from tests.unit.fake_substrate import FakeSubstrate

ASSET = Path(__file__).resolve().parents[1] / "assets" / "subtensor" / "integration_websocket_at_version.txt"

#: (pallet index, call index) of every call the backend sends, in the recorded runtime.
SENT_CALLS = {
    ("Commitments", "set_commitment"): (18, 0),
    ("SubtensorModule", "burned_register"): (7, 7),
    ("SubtensorModule", "set_mechanism_weights"): (7, 119),  # SetWeights, commit-reveal off
    ("SubtensorModule", "commit_timelocked_mechanism_weights"): (7, 118),  # SetWeights, commit-reveal on
}
#: Storage the backend itself reads (the SDK reads more for its preflights; see below), the
#: subnet's weight hyper-parameters (``subnet_params``) included.
BACKEND_READS = {("SubtensorModule", "Uids"), ("SubtensorModule", "Weights"), ("Commitments", "CommitmentOf"),
                 ("Timestamp", "Now"), ("SubtensorModule", "NetworksAdded"),
                 *(("SubtensorModule", item) for item in (
                     "Tempo", "WeightsSetRateLimit", "WeightsVersionKey", "CommitRevealWeightsEnabled",
                     "RevealPeriodEpochs", "MaxWeightsLimit", "MinAllowedWeights"))}
#: What SDK 11.3 uses that spec 343 does not have yet: the MEV shield it requires for
#: ``burned_register`` and the epoch-schedule reads of its weights preflight. A node running
#: spec 343 would refuse these; the SDK needs a newer runtime, not a backend change.
NEWER_THAN_RECORDED = {
    ("MevShield", "NextKey"), ("MevShield", "submit_encrypted"),
    ("SubtensorModule", "SubnetEpochConsensus"), ("SubtensorModule", "LastEpochBlock"),
    ("SubtensorModule", "PendingEpochAt"), ("SubtensorModule", "SubnetEpochIndex"),
    ("SubtensorModule", "CollateralLockShare"),
}


@functools.cache
def recorded() -> RuntimeCodec:
    metadata = strip_option_opaque_metadata(bytes.fromhex(ASSET.read_text().strip().removeprefix("0x")))
    assert metadata is not None
    return RuntimeCodec(metadata, spec_version=343, transaction_version=1)


def metadata_args(module: str, function: str) -> list[tuple[str, str]]:
    """(name, type) of a call's arguments, as the runtime declares them."""
    [pallet] = [p for p in recorded()._rt.metadata_ir()["pallets"] if p["name"] == module]
    [call] = [c for c in pallet["calls"] if c["name"] == function]
    return [(a["name"], a["type_ident"]) for a in call["args"]]


def call_index(module: str, function: str) -> tuple[int, int]:
    """(pallet index, call variant index) straight from the portable registry."""
    pallets = {p["name"]: p["index"] for p in recorded()._rt.metadata_ir()["pallets"]}
    crate = {"SubtensorModule": "pallet_subtensor", "Commitments": "pallet_commitments"}[module]
    [variants] = [t["type"]["def"]["variant"]["variants"] for t in recorded().registry_types()
                  if t["type"].get("path") == [crate, "pallet", "Call"]]
    [index] = [v["index"] for v in variants if v["name"] == function]
    return pallets[module], index


class MetadataSubstrate(FakeSubstrate):
    """``FakeSubstrate`` that first encodes each call and storage key against the recorded runtime."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoded: list[tuple[str, str, dict, bytes]] = []
        self.reads: set[tuple[str, str]] = set()
        self.newer: set[tuple[str, str]] = set()

    def _known(self, module: str, name: str) -> bool:
        if (module, name) in NEWER_THAN_RECORDED:
            self.newer.add((module, name))
            return False
        return True

    async def compose(self, call: Any) -> Any:
        if self._known(call.module, call.function):
            data = recorded().compose_call(call.module, call.function, call.params).data
            self.encoded.append((call.module, call.function, dict(call.params), data))
        return await super().compose(call)

    def _read(self, module: str, name: str, params: list | None) -> None:
        if self._known(module, name):
            entry = recorded().storage_entry(module, name)  # StorageFunctionNotFound if the runtime lacks it
            recorded().storage_key(entry, list(params or []))  # raises on a key of the wrong type
            self.reads.add((module, name))

    async def query(self, module: str, name: str, params: list | None = None, block_hash: str | None = None) -> Any:
        self._read(module, name, params)
        return await super().query(module, name, params, block_hash)

    async def query_map(self, module: str, name: str, params: list | None = None,
                        block_hash: str | None = None) -> list:
        self._read(module, name, params)
        return await super().query_map(module, name, params, block_hash)

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        inputs = recorded()._rt.runtime_api_map()[api][method]["inputs"]
        assert len(inputs) == len(params), f"{api}.{method} takes {inputs}, got {params}"
        for (_, type_string), value in zip(inputs, params, strict=True):
            recorded().encode(type_string, value)
        return await super().runtime_call(api, method, params, block_hash)


KEYS = [Keypair.create_from_uri(f"//meta-{i}") for i in range(3)]


def _wallet(root: Path) -> Any:
    from chain.wallets import create_wallet

    return create_wallet("meta", "h", root)


@pytest.fixture(scope="module")
def exercised(tmp_path_factory: pytest.TempPathFactory) -> MetadataSubstrate:
    """Every backend operation once, plaintext weights and commit-reveal weights included."""
    fake = MetadataSubstrate([k.ss58_address for k in KEYS], [100.0, 0.0, 0.0])
    chain = BittensorChain("ws://127.0.0.1:9944", substrate=fake, sleep=lambda _: None)
    chain.metagraph(1)
    assert chain.subnet_params(1).tempo == 360
    chain.commit(KEYS[1], 1, "s3://bucket/miner-1")
    assert chain.commitments(1) == {KEYS[1].ss58_address: "s3://bucket/miner-1"}
    chain.set_weights(KEYS[0], 1, [1, 2], [0.25, 0.75], version_key=7)
    assert set(chain.weights(1)[0]) == {1, 2}
    fake.commit_reveal = True
    chain.set_weights(KEYS[0], 1, [1, 2], [0.5, 0.5], version_key=7)
    assert chain.register(_wallet(tmp_path_factory.mktemp("wallets")), 1) == 3
    chain.block_timestamp(chain.block() - 1)
    chain.close()
    return fake


def test_every_call_the_backend_sends_has_its_index_and_arguments_in_the_metadata(
    exercised: MetadataSubstrate,
) -> None:
    assert {(m, f) for m, f, _, _ in exercised.encoded} == set(SENT_CALLS)
    for module, function, params, data in exercised.encoded:
        expected = SENT_CALLS[(module, function)]
        assert call_index(module, function) == expected
        assert tuple(data[:2]) == expected, f"{module}.{function} encoded with index {data[:2].hex()}"
        # Compose ignores unknown keys, so the names must be compared, not just encoded.
        assert set(params) == {name for name, _ in metadata_args(module, function)}, (module, function)
        decoded = recorded().decode_call(data)
        assert (decoded["call_module"], decoded["call_function"]) == (module, function)
        assert [a["name"] for a in decoded["call_args"]] == [n for n, _ in metadata_args(module, function)]


def test_the_encoded_arguments_carry_what_the_backend_meant(exercised: MetadataSubstrate) -> None:
    args = {f: {a["name"]: a["value"] for a in recorded().decode_call(d)["call_args"]}
            for _, f, _, d in exercised.encoded}
    hot = exercised.hotkeys[3]
    assert args["burned_register"] == {"netuid": 1, "hotkey": hot}
    assert args["burned_register"]["hotkey"] != exercised.coldkeys[3]  # the coldkey signs, it is no argument
    weights = args["set_mechanism_weights"]
    assert (weights["netuid"], weights["mecid"], weights["dests"], weights["version_key"]) == (1, 0, [1, 2], 7)
    assert weights["weights"][1] == 65535 and 0 < weights["weights"][0] < 65535  # u16, max-normalised
    commit = args["commit_timelocked_mechanism_weights"]
    assert commit["netuid"] == 1 and commit["mecid"] == 0 and commit["reveal_round"] > 0
    assert args["set_commitment"]["info"] == {"fields": [{"Raw19": "0x" + b"s3://bucket/miner-1".hex()}]}


def test_every_storage_read_exists_and_takes_the_keys_passed(exercised: MetadataSubstrate) -> None:
    assert exercised.reads >= BACKEND_READS
    # The SDK's own dependencies on a runtime newer than the recorded one, pinned so a new
    # one shows up here instead of as a failed call on a node.
    assert exercised.newer == NEWER_THAN_RECORDED


def test_the_harness_catches_a_wrong_argument_or_key() -> None:
    with pytest.raises(ValueError, match="hotkey"):
        recorded().compose_call("SubtensorModule", "burned_register", {"netuid": 1, "hotkey_ss58": KEYS[0].ss58_address})
    with pytest.raises(Exception, match="integer"):
        recorded().storage_key(recorded().storage_entry("SubtensorModule", "Uids"), [KEYS[0].ss58_address, 1])
    assert recorded().constant("Aura", "SlotDuration") == 12_000  # the 12 s block the chain code assumes
