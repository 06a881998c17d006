"""Stage-2 jobs travel to workers as typed RemoteJob values, and a malformed payload is refused by name."""

from __future__ import annotations

import json

import pytest

from validator.evaluate import RemoteJob

JOB = RemoteJob(window=7, hotkey="5Hk", url="s3://bucket/x", payload_hash="ab" * 32, step=0.125,
                assigned_page_ids=(3, 9), random_page_ids=(1, 4, 5), seed_hex="0f" * 16, reach=(4.0, 16.0))


def test_round_trip_through_json() -> None:
    assert RemoteJob.from_json(json.loads(json.dumps(JOB.to_json()))) == JOB


@pytest.mark.parametrize(("change", "named"), [
    ({"step": "fast"}, "could not convert"),
    ({"assigned_page_ids": None}, "TypeError"),
    ({"window": None}, "TypeError"),
])
def test_malformed_payload_is_a_value_error(change: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RemoteJob.from_json({**JOB.to_json(), **change})


def test_missing_field_is_named() -> None:
    payload = JOB.to_json()
    del payload["payload_hash"]
    with pytest.raises(ValueError, match="payload_hash"):
        RemoteJob.from_json(payload)
