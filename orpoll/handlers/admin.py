"""/admin: AdminHandler (session, cookies, CSRF rule), the login/logout flow, the password
change and the dashboard page. Settings and status are in admin_settings.py, keys in
admin_keys.py."""

from __future__ import annotations

import json
import logging
import math
import urllib.parse
from typing import Any

import tornado.web

from .. import __version__, errors, i18n
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
# On every admin page, admin error and static file: no framing (clickjacking), no MIME sniffing
# (a served file is never run as another type), and no admin URL leaks to other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
LOGIN_MESSAGES = {"logged_out": "login.logged_out"}  # ?reason= -> catalogue key


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
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    @property
    def secure(self) -> bool:
        config = self.config
        return (
            config.cookie_secure
            or self.request.protocol == "https"
            or config.public_url.startswith("https:")
        )

    def set_cookie(self, name: str, value: str | bytes, **kwargs: Any) -> None:  # type: ignore[override]
        # Every admin cookie (the session's and Tornado's _xsrf) passes through here; the
        # options are keywords only, as every caller passes them.
        super().set_cookie(name, value, **cookie_options(self.secure, **kwargs))

    def origin_hosts(self) -> tuple[str, ...]:
        """The hosts an ``Origin`` may name: the request's Host, PUBLIC_URL's, and the
        X-Forwarded-Host only behind a trusted proxy (anyone can send that header)."""
        hosts = [self.request.host.lower()]
        if self.config.public_url:
            hosts.append(urllib.parse.urlsplit(self.config.public_url).netloc.lower())
        forwarded = self.request.headers.get("X-Forwarded-Host")
        if forwarded and self.config.trust_proxy_headers:
            hosts.append(forwarded.split(",")[0].strip().lower())
        return tuple(hosts)

    def check_xsrf_cookie(self) -> None:
        # Runs before prepare() (tornado/web.py: _execute); must not rely on it.
        origin = self.request.headers.get("Origin")
        if not origin_ok(origin, self.origin_hosts()):
            raise errors.Forbidden(
                f"cross-origin request refused: Origin {origin} is not this server "
                f"(Host {self.request.host}); behind a reverse proxy, set PUBLIC_URL to the "
                "URL browsers use, or forward the Host header",
                code="bad_origin",
            )
        headers = self.request.headers
        bodiless = not self.request.body and "Content-Type" not in headers
        sent_token = "X-Xsrftoken" in headers or "X-Csrftoken" in headers
        if (is_json(self.request) or bodiless) and not sent_token:
            return
        super().check_xsrf_cookie()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # A browser whose form post failed the origin check (typically behind a proxy that
        # does not forward Host) gets a page that says what to set, not a raw JSON error.
        exc = kwargs.get("exc_info", (None, None))[1]
        if getattr(exc, "code", None) == "bad_origin" and self.wants_html():
            return self.render_template(
                "origin_error.html",
                origin=self.request.headers.get("Origin", ""),
                host=self.request.host,
                forwarded_host=self.request.headers.get("X-Forwarded-Host", ""),
                trusted=self.config.trust_proxy_headers,
                public_url=self.config.public_url,
            )
        super().write_error(status_code, **kwargs)

    def wants_html(self) -> bool:
        return not is_json(self.request) and "text/html" in self.request.headers.get("Accept", "")

    def get_current_user(self) -> Session | None:
        days = self.config.session_lifetime / 86400 + 1
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=days)
        self._token = raw.decode() if raw else None
        return self.application.sessions.get(self._token)

    async def prepare(self) -> None:
        session, sessions = self.current_user, self.application.sessions
        if session is None and self._token:
            # A session started on another instance a moment ago, its news still on the way.
            if await self.application.cluster.find_session(sessions.sid_of(self._token)):
                session = self.current_user = sessions.get(self._token)
        if session is not None and self._token and sessions.stale(session):
            await sessions.refresh(session)  # sliding expiry; the cookie is renewed with it
            self.set_session_cookie(self._token)

    def set_session_cookie(self, token: str) -> None:
        days = self.config.session_lifetime / 86400
        self.set_signed_cookie(SESSION_COOKIE, token, expires_days=days, path="/admin")

    async def start_session(self) -> None:
        self._token = await self.application.sessions.create(self.request.remote_ip or "")
        self.set_session_cookie(self._token)
        await self.application.cluster.settle()  # the next request may go to another instance

    async def password_ok(self, password: str) -> bool:
        """Check the admin password under the per-address throttle (RateLimited while the
        address must wait). Failures are logged without the attempted password."""
        addr = self.request.remote_ip or ""
        throttle = self.application.login_throttle
        wait, count = throttle.reserve(addr)
        if wait:
            wait = math.ceil(wait)
            raise errors.RateLimited(
                f"too many failed logins; try again in {wait} s",
                code="login_throttled",
                headers={"Retry-After": str(wait)},
            )
        if await self.application.password.verify(password):
            throttle.succeeded(addr)
            return True
        log.warning("wrong admin password from %s (%d in a row)", addr, count)
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
        except RecursionError:  # the json module recurses once per level of nesting
            raise errors.BadRequest("body is nested too deeply", code="invalid_json") from None
        if not isinstance(body, dict):
            raise errors.BadRequest("body must be a JSON object", code="invalid_json")
        try:
            # A "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder (hashing,
            # SQLite, a log line) accepts; refuse it here, once for every field.
            json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise errors.BadRequest(
                "body holds a lone UTF-16 surrogate (\\ud800-\\udfff)", code="invalid_json"
            ) from None
        return body

    _lang: str | None = None

    @property
    def language(self) -> str:
        """This page's language: ``?lang=``, else the cookie, else Accept-Language."""
        if self._lang is None:
            chosen = self.get_query_argument("lang", "") or self.get_cookie(i18n.COOKIE)
            self._lang = i18n.negotiate(chosen, self.request.headers.get("Accept-Language"))
        return self._lang

    def render_template(self, name: str, **ns: Any) -> None:
        lang = self.language
        if self.get_query_argument("lang", "") == lang:  # the switch was used: remember it
            # Only a display preference: scripts may read it, and a link from elsewhere may
            # carry it (SameSite=Lax).
            self.set_cookie(
                i18n.COOKIE, lang, httponly=False, samesite="Lax", path="/admin", expires_days=365
            )
        ns.update(
            xsrf_token=self.xsrf_token.decode(),
            static_url=self.static_url,
            current_user=self.current_user,
            version=__version__,
            **i18n.template_namespace(lang, self.request.path, self.request.query),
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
        reason = LOGIN_MESSAGES.get(self.get_argument("reason", ""))
        message = i18n.translate(self.language, reason) if reason else ""
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
        session = self.application.sessions.get(self._token)
        self.write_json({"message": "logged in", "expires_at": session and session.expires})

    def refuse(self, form: bool, err: errors.ApiError) -> None:
        if not form:
            raise err
        # The form is shown again with the reason (403 as in jupyterhub/handlers/login.py).
        self.set_status(429 if isinstance(err, errors.RateLimited) else 403)
        for name, value in err.headers.items():
            self.set_header(name, value)
        key, msg, wait = f"error.{err.code}", err.message, err.headers.get("Retry-After", "")
        self.render_login(i18n.translate(self.language, key, msg, detail=msg, wait=wait))


class LogoutHandler(AdminHandler):
    """POST: end the session server-side (the cookie is useless from now on)."""

    async def post(self) -> None:
        if self.current_user is not None and self._token:
            await self.application.sessions.revoke(self._token)
            await self.application.cluster.settle()
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
        await self.application.cluster.password_changed()
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
