"""Who is calling, and may they: bearer tokens for the API, session cookies (with CSRF tokens) for the console.

* The API (``/api/...``) takes only ``Authorization: Bearer <token>`` (``cdp users token NAME``); a cookie
  is ignored there, so a page on another site cannot make a logged-in browser call the API.
* The console takes only its session cookie (``HttpOnly``, ``SameSite=Strict``); every form that changes
  something carries the session's CSRF token, compared in constant time.
* No credentials: 401. Credentials of a user without the role: 403. An ``admin`` holds every role.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Form, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cdp.users import Session, User, UserStore

SESSION_COOKIE = "cdp_session"
LOGIN_CSRF_COOKIE = "cdp_login_csrf"

MARKETER = ("marketer",)
PRIVACY = ("privacy_officer",)
ANY_ROLE = ("marketer", "privacy_officer")


class AuthError(Exception):
    """401 (no or bad credentials) or 403 (wrong role); rendered as JSON for the API, HTML for the console."""

    def __init__(self, status: int, message: str, api: bool) -> None:
        super().__init__(message)
        self.status, self.message, self.api = status, message, api


@dataclass(frozen=True)
class Principal:
    user: User
    session: Session | None = None

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def csrf(self) -> str:
        return self.session.csrf_token if self.session else ""


def users_of(request: Request) -> UserStore:
    return request.app.state.users  # type: ignore[no-any-return]  # set by create_app


_bearer = HTTPBearer(auto_error=False, description="An API token made with `cdp users token NAME`.")


def api_user(*roles: str) -> Callable[..., Principal]:
    """Dependency: the API caller, by bearer token, holding one of ``roles``."""

    def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise AuthError(401, "authentication required: send Authorization: Bearer <token>", api=True)
        user = users_of(request).check_token(credentials.credentials)
        if user is None:
            raise AuthError(401, "invalid or revoked token", api=True)
        if not user.may(*roles):
            raise AuthError(403, f"role {user.role} may not do this (needs {' or '.join(roles)})", api=True)
        return Principal(user)

    return dependency


def session_of(request: Request) -> Session | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    return users_of(request).check_session(cookie) if cookie else None


def page_user(*roles: str) -> Callable[..., Principal]:
    """Dependency: the console user, by session cookie, holding one of ``roles``."""

    def dependency(request: Request) -> Principal:
        session = session_of(request)
        if session is None:
            raise AuthError(401, "Please sign in.", api=False)
        if not session.user.may(*roles):
            raise AuthError(403, f"Your role ({session.user.role}) may not open this page.", api=False)
        return Principal(session.user, session)

    return dependency


def form_user(*roles: str) -> Callable[..., Principal]:
    """Dependency for console forms: :func:`page_user` plus a valid CSRF token in the form."""
    page = page_user(*roles)

    def dependency(request: Request, csrf_token: str = Form("", max_length=200)) -> Principal:
        principal = page(request)
        if not csrf_token or not hmac.compare_digest(csrf_token, principal.csrf):
            raise AuthError(403, "The form expired or did not come from this console (CSRF check failed).", api=False)
        return principal

    return dependency
