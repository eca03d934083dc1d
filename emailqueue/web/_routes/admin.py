"""``/api/admin/*``: queue status and requeueing failed jobs, behind ``QUEUE_ADMIN_TOKEN``."""

from __future__ import annotations

from typing import Annotated, Any, Self

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from emailqueue.web._deps import AdminAuthorized, ConnectionDep, SettingsDep
from emailqueue.web._route import EmailQueueRoute

router = APIRouter(prefix="/admin", tags=["admin"], route_class=EmailQueueRoute)

#: RQ job ids are letters, digits, ``_`` and ``-``.
JobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


class RequeueRequest(BaseModel):
    """``{"ids": [...]}`` or ``{"all": true}``: exactly one of them. ``"force": true`` requeues
    ``outcome_unknown`` jobs too (Resend may have delivered them: they may be sent twice)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ids: list[JobId] | None = Field(default=None, min_length=1, max_length=1000)
    all_: bool = Field(default=False, alias="all")
    force: StrictBool = False  # a JSON true only: it may send emails twice

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.ids is not None) == self.all_:
            raise ValueError('give exactly one of "ids" (a non-empty list of job ids) or "all": true')
        return self


@router.get("/queue-status")
def get_queue_status(
    _auth: AdminAuthorized,
    settings: SettingsDep,
    connection: ConnectionDep,
    limit: Annotated[int, Query(ge=0, le=500, description="how many recent failures to list")] = 20,
) -> dict[str, Any]:
    """Counts, workers and the most recent failed jobs (masked recipients, no bodies)."""
    from emailqueue import queue_status  # imported per use: cold starts import only what runs

    return queue_status(connection, settings, failed_limit=limit).to_dict()


@router.post("/failed/requeue")
def post_requeue(
    _auth: AdminAuthorized, body: RequeueRequest, settings: SettingsDep, connection: ConnectionDep
) -> dict[str, Any]:
    """Requeue failed jobs (same idempotency keys, full retries): ``{"requeued", "not_found",
    "already_delivered", "needs_force", "needs_force_reason"}``. ``outcome_unknown`` jobs stay
    failed, in ``needs_force``, unless ``"force": true``."""
    from emailqueue import requeue_failed

    ids = None if body.all_ else body.ids
    return requeue_failed(connection, settings, ids, force=body.force).to_dict()


@router.get("/emails")
def get_email_lifecycle(
    _auth: AdminAuthorized,
    settings: SettingsDep,
    connection: ConnectionDep,
    q: Annotated[
        str, Query(min_length=1, max_length=320, description="a job id, a Resend email id or an address")
    ],
) -> dict[str, Any]:
    """The lifecycle of the matching emails (masked recipients): ``{"emails": [...]}``."""
    from emailqueue._events import lookup

    return {"emails": [life.to_dict() for life in lookup(connection, q, ttl=settings.email_events_ttl_s)]}


@router.get("/suppressions")
def get_suppressions(_auth: AdminAuthorized, connection: ConnectionDep) -> dict[str, Any]:
    """The suppression list mirrored from Resend, masked: ``{"suppressions": [...]}``."""
    from emailqueue._suppress import list_suppressions

    return {"suppressions": [s.to_dict() for s in list_suppressions(connection)]}


@router.post("/suppressions/sync")
def post_suppressions_sync(
    _auth: AdminAuthorized, settings: SettingsDep, connection: ConnectionDep
) -> dict[str, Any]:
    """Replace the mirror with Resend's list: ``{"suppressed": count}``."""
    from emailqueue._suppress import sync_suppressions

    return {"suppressed": sync_suppressions(connection, settings)}


class RemoveSuppressionRequest(BaseModel):
    """``{"address": "..."}``: the address to remove from Resend's list and the mirror."""

    model_config = ConfigDict(extra="forbid")

    address: Annotated[str, StringConstraints(min_length=3, max_length=320, pattern=r"@")]


@router.post("/suppressions/remove")
def post_suppressions_remove(
    _auth: AdminAuthorized, body: RemoveSuppressionRequest, settings: SettingsDep, connection: ConnectionDep
) -> dict[str, Any]:
    """Remove an address from Resend's list (its API), then from the mirror: ``{"removed": bool}``
    (false: the mirror did not hold it; Resend's list no longer does either way)."""
    from emailqueue._suppress import remove_suppression

    return {"removed": remove_suppression(connection, settings, body.address)}
