"""``/api/v1/validators``: the subnet's validators on chain and how their weights agree with this one's.

Measured by the validator after each window (``validator.agreement``; the API reads no chain):
stake, Yuma validator trust, shared weight and rank correlation with this validator's weights.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from validator.api.deps import SessionDep
from validator.api.schemas import Agreement, ValidatorStandingPublic
from validator.db import repo

router = APIRouter(prefix="/validators", tags=["validators"])


def agreement(session: Session) -> Agreement:
    """The newest measurement (empty before the first)."""
    latest = repo.latest_agreement(session)
    if latest is None:
        return Agreement(window=None, block=None, validators=[])
    window, data = latest
    return Agreement(window=window, block=data.get("block"),
                     validators=[ValidatorStandingPublic.model_validate(v) for v in data.get("validators", [])])


@router.get("", response_model=Agreement)
def validators(session: SessionDep) -> Agreement:
    """The newest measurement, highest stake first (empty before the first one)."""
    return agreement(session)
