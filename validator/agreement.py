"""After each window: how this validator's weights on chain agree with the other validators'.

Yuma pays a validator by how much of its weight survives clipping to the stake-weighted
consensus, so a validator operator (and the subnet owner on the dashboard) wants to see, per
validator: its stake, its Yuma trust, and how much of its weight it shares with this one
(``chain.agreement``). The API reads only the database, so the validator, which talks to the
chain anyway, measures this once per window and stores it with the window. A chain error only
costs the measurement, never the window.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from chain.agreement import standings
from chain.base import ChainError
from protocol.follow import declared_validators
from validator.db import repo

if TYPE_CHECKING:  # window.py imports the service that calls this module
    from validator.window import ValidatorContext

__all__ = ["measure", "record"]

log = logging.getLogger(__name__)


def measure(ctx: ValidatorContext) -> dict[str, Any]:
    """``{"block", "validators": [...]}``: every declared validator on chain, highest stake first."""
    meta = ctx.chain.metagraph(ctx.netuid)
    validators = set(declared_validators(ctx.chain.commitments(ctx.netuid)))
    rows = standings(meta.uids, meta.hotkeys, meta.stakes, ctx.chain.weights(ctx.netuid), validators, ctx.hotkey)
    return {"block": meta.block, "validators": [r._asdict() for r in rows]}


def record(ctx: ValidatorContext, window: int) -> bool:
    """Measure and store with ``window``; False (logged) if the chain could not be read."""
    try:
        agreement = measure(ctx)
    except ChainError as exc:
        log.warning("window %d: agreement not measured: %s", window, exc)
        return False
    with ctx.sessions() as s:
        repo.record_agreement(s, window=window, agreement=agreement)
    return True
