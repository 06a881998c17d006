"""``/api/v1/model/loss``: the global model's loss over windows, what a subnet owner checks first.

Is the shared model learning? Each window scores theta_W on pages drawn from the window's secret
seed, and that "before" loss is the same on every evaluated receipt of the window, so the series
over windows is the model's training curve as this validator measured it (on fresh pages each
window, hence noisy). Items also say which publisher's aggregate made theta_{W+1}.
"""

from __future__ import annotations

from fastapi import APIRouter

from validator.api import queries
from validator.api.deps import DEFAULT_LAST, Last, SessionDep
from validator.api.schemas import ModelLoss, ModelLossPoint

router = APIRouter(prefix="/model", tags=["model"])


@router.get("/loss", response_model=ModelLoss)
def model_loss(session: SessionDep, last: Last = DEFAULT_LAST) -> ModelLoss:
    """The last ``last`` windows, oldest first: theta_W's loss on the window's random pages."""
    rows = queries.model_loss(session, last=last)
    return ModelLoss(last=last, items=[ModelLossPoint.model_validate(r) for r in rows])
