"""The validator's dependencies are frozen; only the carry between windows changes (issue 14)."""

from __future__ import annotations

import dataclasses

import pytest

from validator.window import Carry, ValidatorContext


def test_context_is_frozen_and_the_carry_is_the_mutable_part() -> None:
    assert ValidatorContext.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert not Carry.__dataclass_params__.frozen  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(ValidatorContext)}
    assert {"model", "recent_hashes", "history", "follow_recorded"}.isdisjoint(fields)
    assert {"model", "recent_hashes", "history", "follow_recorded"} <= {f.name for f in dataclasses.fields(Carry)}


def test_assigning_a_dependency_raises() -> None:
    ctx = object.__new__(ValidatorContext)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.netuid = 3  # type: ignore[misc]
