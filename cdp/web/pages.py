"""The console: server-rendered pages for marketers and privacy officers over :mod:`cdp.web.service`.

Signing in: any page asked for without a session answers 401 with the sign-in form (its own CSRF token
in a cookie and the form: double submit); ``POST /login`` starts a session. Forms that change anything
carry the session's CSRF token (:func:`cdp.web.auth.form_user`). Identifiers a privacy officer types
travel only in POST bodies, never in URLs (which proxies and access logs keep).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from cdp.config import PURPOSE_CHANNEL, PURPOSES, Settings
from cdp.errors import CdpError
from cdp.users import MAX_PASSWORD, User
from cdp.web import charts, service
from cdp.web.auth import (
    ANY_ROLE,
    LOGIN_CSRF_COOKIE,
    MARKETER,
    PRIVACY,
    SESSION_COOKIE,
    Principal,
    form_user,
    page_user,
    users_of,
)  # fmt: skip
from consent.segments import dump_yaml, load_yaml
from consent.state import pending_note

HERE = Path(__file__).parent
_env = Environment(
    loader=ChoiceLoader([FileSystemLoader(HERE / "templates"), FileSystemLoader(HERE / "static")]),
    autoescape=select_autoescape(["html", "svg"]),
)
_env.globals["pending_note"] = pending_note  # the note counts carry when consent could not be brought to now
templates = Jinja2Templates(env=_env)

router = APIRouter(include_in_schema=False)  # pages are for browsers; the API is described

REASON_LABELS = {
    "restricted": "restricted", "withdrawn": "withdrawn", "no_consent": "no consent",
    "no_contact_point": "no contact point", "unknown_customer": "unknown customer",
}  # fmt: skip
MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]  # set by create_app


def render(request: Request, name: str, who: Principal | None, status: int = 200, **context: Any) -> HTMLResponse:
    context.update(
        user=who.user if who else None, csrf=who.csrf if who else "", purposes=PURPOSES,
        channels=PURPOSE_CHANNEL, reason_labels=REASON_LABELS,
    )  # fmt: skip
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def login_page(request: Request, message: str = "", status: int = 401) -> HTMLResponse:
    """The sign-in form (answer of every page without a session) with a fresh double-submit CSRF token."""
    token = secrets.token_urlsafe(24)
    next_path = request.url.path if request.method == "GET" and request.url.path != "/login" else "/"
    response = render(request, "login.html", None, status, login_csrf=token, message=message, next=next_path)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", max_age=3600)
    return response


# -- signing in and out --------------------------------------------------------------------------------
@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    username: str = Form("", max_length=40),
    password: str = Form("", max_length=MAX_PASSWORD),
    csrf_token: str = Form("", max_length=200),
    next: str = Form("/", max_length=200),
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, csrf_token):
        return login_page(request, "The sign-in form expired; please try again.")
    name = username.strip().lower()
    user = users_of(request).check_password(name, password)
    if user is None:
        known = users_of(request).get(name)  # a staff name, never a customer's; unknown names are not written
        until = users_of(request).locked_until(name)
        why = "locked out" if until else "wrong user name or password"
        service.audit(settings_of(request), known or User("?", ""), "web_login_failed", why)
        if until:
            return login_page(request, f"Too many failed sign-ins for this name: try again after {until:%H:%M} UTC.")
        return login_page(request, "Wrong user name or password.")
    value, _session = users_of(request).new_session(user)
    service.audit(settings_of(request), user, "web_login", f"signed in as {user.role}")
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, value, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, who: Principal = Depends(form_user(*ANY_ROLE))) -> Response:
    assert who.session is not None  # form_user always has a session
    users_of(request).end_session(who.session.session_id)
    service.audit(settings_of(request), who.user, "web_logout", "signed out")
    response = login_page(request, "Signed out.", status=200)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, who: Principal = Depends(page_user(*ANY_ROLE))) -> HTMLResponse:
    data = service.chart_data(settings_of(request), requests=who.user.may(*PRIVACY))
    pictures = charts.console_charts(data)
    if not who.user.may(*PRIVACY):
        pictures.pop("requests")
    return render(request, "home.html", who, charts=pictures, customers=data["customers"])


# -- marketer ------------------------------------------------------------------------------------------
@router.get("/segments", response_class=HTMLResponse)
def segments(request: Request, who: Principal = Depends(page_user(*MARKETER))) -> HTMLResponse:
    return render(request, "segments.html", who, segments=service.list_segments(settings_of(request)))


def _editor(request: Request, who: Principal, form: dict[str, Any], result: dict[str, Any] | None = None,
            error: str = "", status: int = 200, yaml_text: str = "") -> HTMLResponse:  # fmt: skip
    from consent.segments import FUNCTIONS
    from identity.profiles import SEGMENT_COLUMNS

    return render(
        request, "segment_edit.html", who, status, form=form, result=result, error=error, yaml_text=yaml_text,
        columns=SEGMENT_COLUMNS, functions=sorted(FUNCTIONS.values()),
    )  # fmt: skip


def _form_from_segment(seg: Any) -> dict[str, Any]:
    where = seg.where
    if isinstance(where, str | bool):
        combine, text = "all", str(where).lower() if isinstance(where, bool) else where
    elif isinstance(where, dict) and len(where) == 1 and all(isinstance(i, str) for i in next(iter(where.values()))):
        combine, text = next(iter(where)), "\n".join(next(iter(where.values())))
    else:
        combine, text = "yaml", dump_yaml(where)
    return {"name": seg.name, "description": seg.description, "combine": combine, "conditions": text,
            "fields": list(seg.fields), "activations": list(seg.activations)}  # fmt: skip


@router.get("/segments/new", response_class=HTMLResponse)
def new_segment(request: Request, who: Principal = Depends(page_user(*MARKETER))) -> HTMLResponse:
    form = {"name": "", "description": "", "combine": "all", "conditions": "", "fields": [], "activations": []}
    return _editor(request, who, form)


@router.get("/segments/{name}/edit", response_class=HTMLResponse)
def edit_segment(name: str, request: Request, who: Principal = Depends(page_user(*MARKETER))) -> HTMLResponse:
    return _editor(request, who, _form_from_segment(service.get_segment(settings_of(request), name)))


def _draft(form: dict[str, Any]) -> dict[str, Any]:
    """The segment document the editor's form describes."""
    text = form["conditions"].strip()
    if form["combine"] == "yaml":
        try:
            where = load_yaml(text) if text else True
        except yaml.YAMLError as exc:
            raise CdpError(f"conditions: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        where = True if not lines else lines[0] if len(lines) == 1 else {form["combine"]: lines}
    return {"name": form["name"].strip(), "description": form["description"].strip(), "where": where,
            "fields": list(form["fields"]), "activations": list(form["activations"])}  # fmt: skip


async def _segment_form(request: Request) -> dict[str, Any]:
    data = await request.form()
    combine = str(data.get("combine", "all"))
    return {
        "name": str(data.get("name", ""))[:63],
        "description": str(data.get("description", ""))[:500],
        "combine": combine if combine in ("all", "any", "yaml") else "all",
        "conditions": str(data.get("conditions", ""))[:5000],
        "fields": [str(f) for f in data.getlist("fields")][:20],
        "activations": [str(a) for a in data.getlist("activations")][:6],
    }


@router.post("/segments/preview", response_class=HTMLResponse)
async def preview_segment(request: Request, who: Principal = Depends(form_user(*MARKETER))) -> HTMLResponse:
    """The editor with counts for what is typed; ``?fragment=1`` answers only the preview panel (live preview)."""
    form = await _segment_form(request)
    fragment = request.query_params.get("fragment") == "1"
    settings = settings_of(request)
    result: dict[str, Any] | None = None
    yaml_text = error = ""
    try:
        draft = service.load_draft(_draft(form))
        result = service.preview(settings, draft)
        yaml_text = dump_yaml(draft.document())
    except CdpError as exc:
        error = str(exc)
    if result is not None:
        service.audit(settings, who.user, "web_segment_preview", f"draft segment {draft.name}", result["customers"])
    if fragment:
        return render(request, "_preview.html", who, result=result, error=error, yaml_text=yaml_text)
    return _editor(request, who, form, result, error, 200, yaml_text)


@router.post("/segments/save")
async def save_segment(request: Request, who: Principal = Depends(form_user(*MARKETER))) -> Response:
    form = await _segment_form(request)
    settings = settings_of(request)
    try:
        name = service.save_segment(settings, _draft(form)).stem
    except CdpError as exc:
        return _editor(request, who, form, None, str(exc), 400)
    service.audit(settings, who.user, "web_segment_save", f"segment {name} saved")
    return RedirectResponse(f"/segments/{name}", status_code=303)


@router.get("/segments/{name}", response_class=HTMLResponse)
def segment(name: str, request: Request, who: Principal = Depends(page_user(*MARKETER))) -> HTMLResponse:
    settings = settings_of(request)
    seg = service.get_segment(settings, name)
    result = service.preview(settings, seg)
    service.audit(settings, who.user, "web_segment_preview", f"segment {seg.name}", result["customers"])
    return render(request, "segment.html", who, segment=seg, result=result)


@router.post("/segments/{name}/export")
def export_segment(
    name: str,
    request: Request,
    purpose: str = Form(..., max_length=40),
    format: str = Form("csv", max_length=10),
    who: Principal = Depends(form_user(*MARKETER)),
) -> Response:
    settings = settings_of(request)
    result = service.export(settings, name, purpose, format)
    service.audit(settings, who.user, "web_export", f"segment {name} for {purpose} as {format}: {result.export_id}",
                  result.row_count)  # fmt: skip
    return FileResponse(result.file, media_type=MEDIA[format], filename=result.file.name,
                        headers={"X-Export-Id": result.export_id, "X-Row-Count": str(result.row_count)})  # fmt: skip


@router.get("/exports", response_class=HTMLResponse)
def exports(request: Request, who: Principal = Depends(page_user(*MARKETER))) -> HTMLResponse:
    return render(request, "exports.html", who, exports=service.export_register(settings_of(request)))


# -- privacy officer -----------------------------------------------------------------------------------
@router.get("/privacy", response_class=HTMLResponse)
def privacy(request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    rows = service.requests(settings_of(request))
    return render(request, "privacy.html", who, requests=list(reversed(rows))[:10], form={})


@router.post("/privacy/intake", response_model=None)
def intake(
    request: Request,
    kind: str = Form(..., max_length=20),
    by: str = Form(..., max_length=20),
    value: str = Form(..., max_length=320),
    who: Principal = Depends(form_user(*PRIVACY)),
) -> Response:
    """A new request: erasure shows its dry run; access downloads the document; a restriction is recorded."""
    settings = settings_of(request)
    form = {"kind": kind, "by": by}
    try:
        if kind not in service.INTAKE_KINDS:
            raise CdpError(f"request kind must be one of {', '.join(service.INTAKE_KINDS)}")
        subj = service.subject(settings, by, value)
        if kind == "erasure":
            report = service.erasure_dry_run(settings, subj)
            service.audit(settings, who.user, "web_erase_dry_run", "erasure planned", report.plan.total,
                          report.request_id)  # fmt: skip
            return render(request, "erasure_preview.html", who, plan=service.plan_summary(report), by=by, value=value)
        if kind == "access":
            result, data = service.access(settings, subj)
            service.audit(settings, who.user, "web_access", "access document downloaded", result.records,
                          result.request_id)  # fmt: skip
            return Response(data, media_type="application/json", headers={
                "Content-Disposition": f'attachment; filename="{result.request_id}.json"',
                "X-Request-Id": result.request_id, "Cache-Control": "no-store"})  # fmt: skip
        restricted = service.restrict(settings, subj, kind)
        service.audit(settings, who.user, f"web_{kind}", f"{kind} recorded", restricted.changed,
                      restricted.request_id)  # fmt: skip
        return RedirectResponse(f"/privacy/requests/{restricted.request_id}", status_code=303)
    except service.NotFound:
        raise
    except CdpError as exc:
        rows = service.requests(settings)
        return render(request, "privacy.html", who, 400, requests=list(reversed(rows))[:10], form=form,
                      error=str(exc))  # fmt: skip


@router.post("/privacy/erasure/confirm", response_class=HTMLResponse)
def confirm_erasure(
    request: Request,
    by: str = Form(..., max_length=20),
    value: str = Form(..., max_length=320),
    request_id: str = Form(..., max_length=40),
    confirm: str = Form("", max_length=10),
    who: Principal = Depends(form_user(*PRIVACY)),
) -> HTMLResponse:
    settings = settings_of(request)
    subj = service.subject(settings, by, value)
    if confirm != "yes":
        report = service.erasure_dry_run(settings, subj)
        return render(request, "erasure_preview.html", who, 400, plan=service.plan_summary(report), by=by,
                      value=value, error="Tick the box to confirm: erasure cannot be undone.")  # fmt: skip
    report = service.erase(settings, subj, request_id)
    service.audit(settings, who.user, "web_erase", "erasure confirmed and carried out", sum(report.deleted.values()),
                  report.request_id)  # fmt: skip
    return render(request, "receipt.html", who, plan=service.plan_summary(report),
                  pr=service.request_detail(settings, report.request_id))  # fmt: skip


@router.get("/privacy/requests", response_class=HTMLResponse)
def requests(request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    settings = settings_of(request)
    rows = service.requests(settings)
    picture = charts.console_charts(service.chart_data(settings))["requests"]
    return render(request, "requests.html", who, requests=list(reversed(rows)), chart=picture,
                  overdue=sum(r["overdue"] for r in rows))  # fmt: skip


@router.get("/privacy/requests/{request_id}", response_class=HTMLResponse)
def request_receipt(request_id: str, request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    detail = service.request_detail(settings_of(request), request_id)
    return render(request, "receipt.html", who, plan=None, pr=detail)


@router.get("/privacy/audit", response_class=HTMLResponse)
def audit_log(request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    return render(request, "audit.html", who, lines=service.audit_lines(settings_of(request)))


@router.get("/customers", response_class=HTMLResponse)
def customers(request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    return render(request, "customers.html", who, found=None, form={})


@router.post("/customers/lookup", response_model=None)
def lookup(
    request: Request,
    by: str = Form(..., max_length=20),
    value: str = Form(..., max_length=320),
    who: Principal = Depends(form_user(*PRIVACY)),
) -> Response:
    settings = settings_of(request)
    try:
        found = service.find_customers(settings, by, value)
    except CdpError as exc:
        return render(request, "customers.html", who, 400, found=None, form={"by": by}, error=str(exc))
    service.audit(settings, who.user, "web_customer_lookup", f"lookup by {by}", len(found))
    if len(found) == 1:
        return RedirectResponse(f"/customers/{found[0]}", status_code=303)
    return render(request, "customers.html", who, found=found, form={"by": by})


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
def customer(customer_id: str, request: Request, who: Principal = Depends(page_user(*PRIVACY))) -> HTMLResponse:
    settings = settings_of(request)
    view = service.customer_view(settings, customer_id)
    service.audit(settings, who.user, "web_customer_view", "customer profile viewed", len(view["records"]))
    return render(request, "customer.html", who, view=view)
