"""The console and API application: ``create_app(settings)`` builds it, ``cdp serve`` runs it on uvicorn.

Errors a person can fix (:class:`cdp.errors.CdpError`) answer 400 with their one line, 404 when the thing
does not exist, 503 when another process holds the store; anything else is a bug and answers 500 without
details. The OpenAPI description is at ``/api/openapi.json`` for signed-in callers.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cdp.config import Settings, load_settings
from cdp.errors import CdpError, StoreBusyError
from cdp.users import UserStore
from cdp.web import api, pages, service
from cdp.web.auth import ANY_ROLE, AuthError, Principal, api_user

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; form-action 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
}


#: The largest request body read: a segment, a subject or a sign-in form is a few kilobytes. A body is parsed
#: before the route's credentials are checked, so without a bound anyone reaching the port could make the
#: server read (and hold) as much as they send.
MAX_BODY_BYTES = 256 * 1024


class BodyLimit:
    """Refuse, before any of it is read, a request body over ``limit`` bytes (413) or sent in chunks (411: a
    chunked body, with a declared length or not, could not be bounded before it is read)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()  # as sent: 'Chunked' too
            status, message = 0, ""
            if chunked:  # with a Content-Length too, a server may read the chunks and not the length
                status, message = 411, "a request body needs a Content-Length (and no chunked encoding)"
            elif length is not None and (not length.isdigit() or int(length) > self.limit):
                status, message = 413, f"request body over {self.limit // 1024} KiB"
            if status:
                response: Response = (
                    JSONResponse({"detail": message}, status_code=status)
                    if scope["path"].startswith("/api/")
                    else PlainTextResponse(message, status_code=status)
                )
                response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, users: UserStore | None = None) -> FastAPI:
    """The FastAPI app over ``settings`` (default: :func:`cdp.config.load_settings`) and its user store
    (default: ``settings.home / "users.db"``)."""
    settings = settings or load_settings()
    app = FastAPI(
        title="CDP console API",
        version="1",
        description="Segments and consented exports for marketers; privacy requests for privacy officers. "
        "Every route but /api/health needs `Authorization: Bearer <token>` (`cdp users token NAME`).",
        openapi_url=None,  # served below, to signed-in callers only
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.users = users or UserStore.for_home(settings.home)
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/api/openapi.json", tags=["meta"], include_in_schema=False)
    def openapi(who: Principal = Depends(api_user(*ANY_ROLE))) -> dict[str, Any]:
        return app.openapi()

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        # Profiles, access documents, exports, customer pages: never kept by a browser's or a proxy's cache.
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_middleware(BodyLimit)  # outermost: a body too large is refused before anything reads it

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def problem(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        if is_api(request):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        who = None
        session = pages.users_of(request).check_session(request.cookies.get(pages.SESSION_COOKIE, "") or "")
        if session is not None:
            who = Principal(session.user, session)
        return pages.render(request, "error.html", who, status, status_code=status, message=message)

    @app.exception_handler(AuthError)
    def auth_error(request: Request, exc: AuthError) -> Response:
        if exc.api:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)
        if exc.status == 401:
            return pages.login_page(request, "" if request.method == "GET" else exc.message)
        return problem(request, exc.status, exc.message)

    @app.exception_handler(service.NotFound)
    def not_found(request: Request, exc: service.NotFound) -> Response:
        return problem(request, 404, str(exc))

    @app.exception_handler(StoreBusyError)
    def busy(request: Request, exc: StoreBusyError) -> Response:
        return problem(request, 503, "the store is in use by another process (a pipeline run?); try again shortly",
                       {"Retry-After": "10"})  # fmt: skip

    @app.exception_handler(CdpError)
    def fixable(request: Request, exc: CdpError) -> Response:
        return problem(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> Response:
        if is_api(request):
            return JSONResponse({"detail": _plain_errors(exc)}, status_code=422)
        return problem(request, 422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    return app


def _plain_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Validation errors without the input echoed back (it may be an identifier)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
