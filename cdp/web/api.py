"""The HTTP API under the console: JSON in and out (files as downloads), bearer tokens, one role per route.

Marketers: segments, previews, consented exports and the export register. Privacy officers: intake,
erasure dry run and confirmation, access documents, restrictions, the request register, customer view.
Everyone signed in: who am I, the chart data. Nothing answers anonymously but ``/api/health``.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cdp.config import PURPOSES, Settings
from cdp.web import service
from cdp.web.auth import ANY_ROLE, MARKETER, PRIVACY, Principal, api_user

router = APIRouter(prefix="/api")

Purpose = Literal[PURPOSES]  # type: ignore[valid-type]  # a tuple of literals, fixed at import
SubjectKind = Literal["email", "phone", "customer_id"]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", max_length=63)]
Column = Annotated[str, Field(max_length=63)]
MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]  # set by create_app


def plain(value: Any) -> Any:
    """Store values as JSON: times as ISO text, decimals as text, arrays as lists."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    return value


def ok(doc: Any) -> JSONResponse:
    return JSONResponse(plain(doc))


# -- models --------------------------------------------------------------------------------------------
class SegmentDraft(BaseModel):
    """A segment as a YAML file would hold it: ``where`` is one condition, ``true``, or an all/any tree."""

    model_config = ConfigDict(extra="forbid")
    name: Name
    description: str = Field("", max_length=500)
    where: str | bool | dict[str, list[Any]] = Field(..., examples=["total_spend >= 100"])
    fields: list[Column] = Field(default_factory=list, max_length=20)
    activations: list[Purpose] = Field(default_factory=list, max_length=6)

    def draft(self) -> dict[str, Any]:
        return self.model_dump()


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Purpose
    format: Literal["csv", "parquet"] = "csv"


class SubjectRequest(BaseModel):
    """The subject of a privacy request, named by one identifier."""

    model_config = ConfigDict(extra="forbid")
    by: SubjectKind
    value: str = Field(..., min_length=1, max_length=320)


class ErasureConfirm(SubjectRequest):
    request_id: str = Field(..., min_length=1, max_length=40, description="The id the dry run returned.")
    confirm: Literal[True] = Field(..., description="Must be true: erasure cannot be undone.")


class RestrictionRequest(SubjectRequest):
    kind: Literal["restriction", "objection"] = "restriction"


# -- everyone ------------------------------------------------------------------------------------------
@router.get("/health", tags=["meta"])
def health() -> dict[str, str]:
    """Liveness check; the only route that answers without credentials."""
    return {"status": "ok"}


@router.get("/me", tags=["meta"])
def me(who: Principal = Depends(api_user(*ANY_ROLE))) -> dict[str, str]:
    return {"name": who.name, "role": who.user.role}


@router.get("/charts", tags=["meta"])
def charts(request: Request, who: Principal = Depends(api_user(*ANY_ROLE))) -> JSONResponse:
    """Counts behind the charts: cluster sizes, match weights, consent coverage, and for privacy officers
    privacy requests per day (a marketer's list is empty)."""
    return ok(service.chart_data(settings_of(request), requests=who.user.may(*PRIVACY)))


# -- marketer ------------------------------------------------------------------------------------------
@router.get("/segments", tags=["segments"])
def segments(request: Request, who: Principal = Depends(api_user(*MARKETER))) -> JSONResponse:
    """Every segment with its size before consent and how many may be contacted per purpose."""
    return ok(service.list_segments(settings_of(request)))


@router.post("/segments/preview", tags=["segments"])
def preview_draft(body: SegmentDraft, request: Request, who: Principal = Depends(api_user(*MARKETER))) -> JSONResponse:
    """Counts of an unsaved segment: before consent, allowed per purpose, and left out by reason."""
    settings = settings_of(request)
    result = service.preview(settings, service.load_draft(body.draft()))
    service.audit(settings, who.user, "web_segment_preview", f"draft segment {body.name}", result["customers"])
    return ok(result)


@router.put("/segments/{name}", tags=["segments"])
def save_segment(
    name: Name, body: SegmentDraft, request: Request, who: Principal = Depends(api_user(*MARKETER))
) -> JSONResponse:
    """Save a segment as ``<segments_dir>/<name>.yaml`` (validated exactly as a file is)."""
    if body.name != name:
        return JSONResponse({"detail": "the name in the path and in the body differ"}, status_code=400)
    settings = settings_of(request)
    service.save_segment(settings, body.draft())
    service.audit(settings, who.user, "web_segment_save", f"segment {name} saved")
    return ok({"saved": name})


@router.get("/segments/{name}/preview", tags=["segments"])
def preview_segment(
    name: Name,
    request: Request,
    purpose: Purpose | None = Query(None),
    who: Principal = Depends(api_user(*MARKETER)),
) -> JSONResponse:
    settings = settings_of(request)
    segment = service.get_segment(settings, name)
    result = service.preview(settings, segment, (purpose,) if purpose else PURPOSES)
    service.audit(settings, who.user, "web_segment_preview", f"segment {name}", result["customers"])
    return ok(result)


@router.post(
    "/segments/{name}/export",
    tags=["segments"],
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def export_segment(
    name: Name, body: ExportRequest, request: Request, who: Principal = Depends(api_user(*MARKETER))
) -> FileResponse:
    """Export the segment's customers who may be contacted for the purpose; recorded in the export register."""
    settings = settings_of(request)
    result = service.export(settings, name, body.purpose, body.format)
    service.audit(
        settings, who.user, "web_export", f"segment {name} for {body.purpose} as {body.format}: {result.export_id}",
        result.row_count,
    )  # fmt: skip
    return FileResponse(
        result.file, media_type=MEDIA[body.format], filename=result.file.name,
        headers={"X-Export-Id": result.export_id, "X-Row-Count": str(result.row_count)},
    )  # fmt: skip


@router.get("/exports", tags=["segments"])
def exports(request: Request, who: Principal = Depends(api_user(*MARKETER))) -> JSONResponse:
    """The export register: every file that left, newest first (counts and hashes, no personal data)."""
    return ok(service.export_register(settings_of(request)))


# -- privacy officer -----------------------------------------------------------------------------------
@router.get("/privacy/requests", tags=["privacy"])
def privacy_requests(request: Request, who: Principal = Depends(api_user(*PRIVACY))) -> JSONResponse:
    """The register of privacy requests with due dates and overdue flags."""
    return ok(service.requests(settings_of(request)))


@router.get("/privacy/requests/{request_id}", tags=["privacy"])
def privacy_request(
    request_id: Annotated[str, Field(max_length=40)], request: Request, who: Principal = Depends(api_user(*PRIVACY))
) -> JSONResponse:
    """One request and its audit trail (the receipt)."""
    return ok(service.request_detail(settings_of(request), request_id))


@router.post("/privacy/erasure/dry-run", tags=["privacy"])
def erasure_dry_run(
    body: SubjectRequest, request: Request, who: Principal = Depends(api_user(*PRIVACY))
) -> JSONResponse:
    """Register an erasure request and show what erasing would remove; nothing is erased."""
    settings = settings_of(request)
    report = service.erasure_dry_run(settings, service.subject(settings, body.by, body.value))
    service.audit(settings, who.user, "web_erase_dry_run", "erasure planned", report.plan.total, report.request_id)
    return ok(service.plan_summary(report))


@router.post("/privacy/erasure", tags=["privacy"])
def erasure(body: ErasureConfirm, request: Request, who: Principal = Depends(api_user(*PRIVACY))) -> JSONResponse:
    """Erase the subject of a dry-run request everywhere, suppress re-ingestion; returns the receipt."""
    settings = settings_of(request)
    report = service.erase(settings, service.subject(settings, body.by, body.value), body.request_id)
    service.audit(settings, who.user, "web_erase", "erasure confirmed and carried out",
                  sum(report.deleted.values()), report.request_id)  # fmt: skip
    return ok(service.plan_summary(report))


@router.post(
    "/privacy/access",
    tags=["privacy"],
    responses={200: {"content": {"application/json": {}}, "description": "The access document"}},
)
def access(body: SubjectRequest, request: Request, who: Principal = Depends(api_user(*PRIVACY))) -> Response:
    """Everything held on the subject, as a JSON document (downloaded, not kept on the server)."""
    settings = settings_of(request)
    result, data = service.access(settings, service.subject(settings, body.by, body.value))
    service.audit(settings, who.user, "web_access", "access document downloaded", result.records, result.request_id)
    return Response(
        data, media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{result.request_id}.json"',
                 "X-Request-Id": result.request_id},
    )  # fmt: skip


@router.post("/privacy/restriction", tags=["privacy"])
def restriction(
    body: RestrictionRequest, request: Request, who: Principal = Depends(api_user(*PRIVACY))
) -> JSONResponse:
    """Restrict processing (or record an objection): the subject stays out of every export."""
    settings = settings_of(request)
    result = service.restrict(settings, service.subject(settings, body.by, body.value), body.kind)
    service.audit(settings, who.user, f"web_{body.kind}", f"{body.kind} recorded", result.changed, result.request_id)
    return ok({"request_id": result.request_id, "customers": result.customers, "changed": result.changed})


@router.post("/customers/lookup", tags=["customers"])
def find_customers(
    body: SubjectRequest, request: Request, who: Principal = Depends(api_user(*PRIVACY))
) -> JSONResponse:
    """Customer ids carrying the identifier (several for a shared household phone); the identifier travels
    in the body, never in a URL."""
    settings = settings_of(request)
    ids = service.find_customers(settings, body.by, body.value)
    service.audit(settings, who.user, "web_customer_lookup", f"lookup by {body.by}", len(ids))
    return ok({"customer_ids": ids})


@router.get("/customers/{customer_id}", tags=["customers"])
def customer(
    customer_id: Annotated[str, Field(max_length=200)], request: Request, who: Principal = Depends(api_user(*PRIVACY))
) -> JSONResponse:
    """One customer: profile with provenance, linked records, consent and its history, why records merged."""
    settings = settings_of(request)
    view = service.customer_view(settings, customer_id)
    service.audit(settings, who.user, "web_customer_view", "customer profile viewed", len(view["records"]))
    return JSONResponse(json.loads(json.dumps(plain(view), default=str)))
