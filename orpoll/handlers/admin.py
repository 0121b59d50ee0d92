"""/admin: AdminHandler (session, cookies, CSRF rule), the login/logout flow, the password
change and the dashboard page. Settings and status are in admin_settings.py, keys in
admin_keys.py."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import tornado.web

from .. import __version__, errors
from ..auth import SESSION_COOKIE, Session, cookie_options, local_path, origin_ok, weak_password
from ..logs import plural
from .base import BaseHandler

log = logging.getLogger("orpoll.admin")
DASHBOARD = "/admin/dashboard"
# Scripts and styles only from /static: an injected <script> or on*= handler cannot run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
LOGIN_MESSAGES = {"logged_out": "You are signed out."}


class UnsupportedMediaType(errors.ApiError):
    status, error_type = 415, "invalid_request_error"


def is_json(request: tornado.httputil.HTTPServerRequest) -> bool:
    ctype = request.headers.get("Content-Type", "")
    return ctype.split(";")[0].strip().lower() == "application/json"


class AdminHandler(BaseHandler):
    """Base of /admin. CSRF rule: a request with a JSON body or with no body at all needs a
    same-site ``Origin`` (when the browser sends one); anything else (a form) also needs
    Tornado's ``_xsrf`` token. A cross-site form can send neither JSON nor a custom header."""

    _token: str | None = None

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    @property
    def secure(self) -> bool:
        return self.config.cookie_secure or self.request.protocol == "https"

    def set_cookie(self, name: str, value: str | bytes, **kwargs: Any) -> None:
        # Every admin cookie (the session's and Tornado's _xsrf) passes through here.
        super().set_cookie(name, value, **cookie_options(self.secure, **kwargs))

    def check_xsrf_cookie(self) -> None:
        # Runs before prepare() (tornado/web.py: _execute); must not rely on it.
        if not origin_ok(self.request.headers, self.request.host):
            raise errors.Forbidden("cross-origin request refused", code="bad_origin")
        headers = self.request.headers
        bodiless = not self.request.body and "Content-Type" not in headers
        sent_token = "X-Xsrftoken" in headers or "X-Csrftoken" in headers
        if (is_json(self.request) or bodiless) and not sent_token:
            return
        super().check_xsrf_cookie()

    def get_current_user(self) -> Session | None:
        days = self.config.session_lifetime / 86400 + 1
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
        self._token = raw.decode() if raw else None
        return self.application.sessions.get(self._token)

    async def prepare(self) -> None:
        session, sessions = self.current_user, self.application.sessions
        if session is not None and sessions.stale(session):
            await sessions.refresh(session)  # sliding expiry; the cookie is renewed with it
            self.set_session_cookie(self._token)

    def set_session_cookie(self, token: str) -> None:
        days = self.config.session_lifetime / 86400
        self.set_signed_cookie(SESSION_COOKIE, token, expires_days=days, path="/admin")

    async def start_session(self) -> None:
        self._token = await self.application.sessions.create(self.request.remote_ip or "")
        self.set_session_cookie(self._token)

    async def password_ok(self, password: str) -> bool:
        """Check the admin password under the per-address throttle (RateLimited while the
        address must wait). Failures are logged without the attempted password."""
        addr = self.request.remote_ip or ""
        throttle = self.application.login_throttle
        wait = math.ceil(throttle.retry_after(addr))
        if wait:
            raise errors.RateLimited(
                f"too many failed logins; try again in {wait} s",
                code="login_throttled",
                headers={"Retry-After": str(wait)},
            )
        if await self.application.password.verify(password):
            throttle.succeeded(addr)
            return True
        log.warning("wrong admin password from %s (%d in a row)", addr, throttle.failed(addr))
        return False

    def json_body(self) -> dict[str, Any]:
        """The request's JSON object; 415 for another content type, 400 if malformed."""
        if not is_json(self.request):
            raise UnsupportedMediaType(
                "send JSON (Content-Type: application/json)", code="unsupported_media_type"
            )
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise errors.BadRequest(f"body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise errors.BadRequest("body must be a JSON object", code="invalid_json")
        return body

    def render_template(self, name: str, **ns: Any) -> None:
        ns.update(
            xsrf_token=self.xsrf_token.decode(),
            static_url=self.static_url,
            current_user=self.current_user,
            version=__version__,
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(self.application.jinja.get_template(name).render(**ns))


class AdminApiHandler(AdminHandler):
    """The admin JSON API: 401 (OpenAI-shaped) without a session, never a redirect."""

    async def prepare(self) -> None:
        await super().prepare()
        if self.current_user is None:
            raise errors.Unauthorized(
                'admin session required: log in with POST /admin/login {"password": ...}',
                code="admin_session_required",
            )


def text_field(body: dict[str, Any], name: str, *, limit: int = 10_000) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > limit:
        raise errors.BadRequest(f"{name} must be a string", param=name, code="invalid_type")
    return value


# ---- login, logout, password ------------------------------------------------------------------


class LoginHandler(AdminHandler):
    """GET: the login page. POST: JSON ``{"password"}`` (the original's flow) or the form."""

    def get(self) -> None:
        if self.current_user:
            return self.redirect(DASHBOARD)
        self.render_login()

    def render_login(self, error: str = "") -> None:
        target = self.get_argument("next", None)
        message = LOGIN_MESSAGES.get(self.get_argument("reason", ""), "")
        self.render_template(
            "login.html", next=local_path(target, DASHBOARD), message=message, error=error
        )

    async def post(self) -> None:
        form = not is_json(self.request)
        body = {} if form else self.json_body()
        password = self.get_body_argument("password", "") if form else text_field(body, "password")
        try:
            ok = await self.password_ok(password)
        except errors.RateLimited as err:
            return self.refuse(form, err)
        if not ok:
            return self.refuse(form, errors.Unauthorized("wrong password", code="invalid_password"))
        await self.start_session()
        log.info("admin login from %s", self.request.remote_ip)
        if form:
            return self.redirect(local_path(self.get_body_argument("next", None), DASHBOARD))
        expires = self.application.sessions.get(self._token).expires
        self.write_json({"message": "logged in", "expires_at": expires})

    def refuse(self, form: bool, err: errors.ApiError) -> None:
        if not form:
            raise err
        # The form is shown again with the reason (403 as in jupyterhub/handlers/login.py).
        self.set_status(429 if isinstance(err, errors.RateLimited) else 403)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.render_login(err.message)


class LogoutHandler(AdminHandler):
    """POST: end the session server-side (the cookie is useless from now on)."""

    async def post(self) -> None:
        if self.current_user is not None:
            await self.application.sessions.revoke(self._token)
        self.clear_cookie(SESSION_COOKIE, path="/admin")
        if is_json(self.request) or not self.request.body:
            return self.write_json({"message": "logged out"})
        self.redirect("/admin/login?reason=logged_out")


class PasswordHandler(AdminApiHandler):
    """POST ``{"current_password", "new_password"}``: every session ends; this one restarts."""

    async def post(self) -> None:
        body = self.json_body()
        current, new = text_field(body, "current_password"), text_field(body, "new_password")
        password = self.application.password
        if password.from_env:
            raise errors.Conflict(
                "the admin password is set by ADMIN_PASSWORD: change it there and restart",
                code="password_from_env",
            )
        if not await self.password_ok(current):
            raise errors.Forbidden(
                "current password is wrong", param="current_password", code="invalid_password"
            )
        problem = weak_password(new)
        if problem:
            raise errors.BadRequest(problem, param="new_password", code="weak_password")
        await password.change(new)
        revoked = await self.application.sessions.revoke_all()
        await self.start_session()
        log.warning(
            "admin password changed from %s; %s ended",
            self.request.remote_ip,
            plural(revoked, "session"),
        )
        self.write_json(
            {
                "message": "password changed; other sessions are signed out",
                "sessions_revoked": revoked,
            }
        )


# ---- pages ------------------------------------------------------------------------------------


class AdminRootHandler(AdminHandler):
    def get(self) -> None:
        self.redirect(DASHBOARD)


class DashboardHandler(AdminHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.render_template("dashboard.html", page="dashboard")


routes = [
    (r"/", AdminRootHandler),  # as the original: the root leads to the admin
    (r"/admin/?", AdminRootHandler),
    (r"/admin/login", LoginHandler),
    (r"/admin/logout", LogoutHandler),
    (r"/admin/password", PasswordHandler),
    (r"/admin/dashboard", DashboardHandler),
]
