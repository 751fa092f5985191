"""The agent console and dashboard: server-rendered pages under ``/console``.

Agents sign in with an API key holding ``customers:read``; the key is checked once and a
server-side session (``crm_service.access.console_sessions``) is opened. The browser holds only a
random session token, in an HttpOnly, SameSite=Strict cookie scoped to ``/console`` (Secure when
the request came over HTTPS). Every POST carries a CSRF token: the session's, or before sign-in
a double-submit token from its own cookie. Searches are POSTs too, so emails and phone numbers
never land in URLs, browser history or proxy logs.

The pages use no JavaScript at all (the Content-Security-Policy forbids scripts): forms, links
and one stylesheet. Each response says its server time in a ``Server-Timing`` header.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from api.console.i18n import LANGUAGE_NAMES, LANGUAGES, MESSAGES, negotiate, translate
from api.services import services
from crm_service.access import console_sessions
from crm_service.access.console_sessions import ConsoleSession
from crm_service.customers import profiles
from crm_service.customers.ids import check_customer_id
from crm_service.errors import DatabaseUnavailableError, SignInError, ValidationError
from crm_service.platform.db import DatabaseUnavailable
from crm_service.privacy import erasure
from crm_service.scoring import dashboard
from crm_service.scoring.plots import LANGUAGES as PLOT_LANGUAGES
from crm_service.scoring.plots import PLOTS, run_plot

log = logging.getLogger("crm.console")

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")

SESSION_COOKIE = "crm_console"
CSRF_COOKIE = "crm_console_csrf"
LANG_COOKIE = "crm_lang"
COOKIE_PATH = "/console"
MAX_QUERY = 254

_SECURITY_HEADERS = {
    # No scripts at all; styles and images only from this server; forms post only here.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

F = TypeVar("F", bound=Callable[..., Any])


class CsrfError(Exception):
    """A POST without the right CSRF token."""


# --- requests ---------------------------------------------------------------------------

@bp.before_request
def _load_session() -> None:
    g.lang = negotiate(request.cookies.get(LANG_COOKIE),
                       [tag for tag, _q in request.accept_languages])
    g.console_session = None
    token = request.cookies.get(SESSION_COOKIE)
    if token and request.endpoint != "console.static":
        svc = services()
        with svc.reader.connection() as conn:
            g.console_session = console_sessions.resolve(conn, svc.settings, token)


@bp.after_request
def _headers(response: Response) -> BaseResponse:
    if request.endpoint != "console.static":
        _protect(response)
    started = getattr(g, "started", None)
    if started is not None:
        response.headers["Server-Timing"] = \
            f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


def _protect(response: BaseResponse) -> None:
    """The console's security and caching headers (idempotent)."""
    response.headers.update(_SECURITY_HEADERS)
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    # Pages hold personal data: never stored by the browser or a proxy.
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    response.vary.update(("Cookie", "Accept-Language"))


def signed_in(view: F) -> F:
    """The view needs a live console session; otherwise go to sign-in and come back."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if g.console_session is None:
            # Back to this page after sign-in; a POST (a search) cannot be replayed by a GET.
            back = request.path if request.method == "GET" else None
            return redirect(url_for("console.sign_in", next=back,
                                    reason="session" if SESSION_COOKIE in request.cookies
                                    else None), 303)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_csrf(expected: str | None) -> None:
    given = request.form.get("csrf_token", "")
    if not expected or not given or not hmac.compare_digest(given, expected):
        raise CsrfError()


def _safe_next(target: str | None) -> str:
    """Only a console path of this server (no scheme, host, or ``//``): no open redirect."""
    if target and target.startswith(COOKIE_PATH + "/") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and not target.startswith("//"):
            return target
    return url_for("console.home")


# --- templates ----------------------------------------------------------------------------

@bp.app_template_filter("money")
def _money(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.2f}"


@bp.app_template_filter("pct")
def _pct(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{float(value) * 100:.{digits}f}%"


@bp.app_template_filter("num")
def _num(value: Any, digits: int = 0) -> str:
    return "–" if value is None else f"{float(value):,.{digits}f}"


@bp.app_template_filter("day")
def _day(value: Any) -> str:
    """A date, or a timestamp's date in the reporting time zone (CRM_TIMEZONE)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        if len(value) <= 10:
            return value
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.astimezone(services().settings.zone).date().isoformat()
    return value.isoformat() if isinstance(value, date) else str(value)


@bp.app_template_filter("when")
def _when(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value.astimezone(services().settings.zone).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _context() -> dict[str, Any]:
    """What every console template sees.

    Passed explicitly, not by a context processor: an error page may be rendered outside the
    blueprint (a routing error), where the blueprint's hooks did not run.
    """
    lang = getattr(g, "lang", None) or negotiate(request.cookies.get(LANG_COOKIE),
                                                 [tag for tag, _q in request.accept_languages])
    session: ConsoleSession | None = getattr(g, "console_session", None)

    def t(key: str, **values: Any) -> str:
        return translate(lang, key, **values)

    def has(key: str) -> bool:
        return key in MESSAGES

    return {"t": t, "has_text": has, "lang": lang, "languages": LANGUAGES,
            "language_names": LANGUAGE_NAMES, "console_session": session,
            "csrf_token": session.csrf_token if session else None,
            "currency": services().settings.currency, "plots": PLOTS}


def _page(template: str, status: int = 200, **context: Any) -> BaseResponse:
    values = _context()
    values.update(context)
    return current_app.make_response((render_template(f"console/{template}", **values),
                                      status))


_LOOPBACK = {"localhost", "127.0.0.1", "[::1]", "::1"}


def _secure_cookies() -> bool:
    """Whether cookies get the Secure attribute (``CRM_CONSOLE_SECURE_COOKIES``).

    ``auto``: always, except for plain HTTP to this machine (the demo on 127.0.0.1). A console
    reached by a public name is assumed to be behind TLS even when the proxy does not say so
    (gunicorn trusts ``X-Forwarded-Proto`` only from 127.0.0.1). ``never`` is for a plain-HTTP
    intranet, where browsers would otherwise drop the session cookie.
    """
    policy = services().settings.console_secure_cookies
    if policy != "auto":
        return policy == "always"
    host = request.host
    name = host[:host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
    return request.is_secure or name not in _LOOPBACK


def _set_cookie(response: BaseResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True,
                        secure=_secure_cookies(), samesite="Strict")


# --- sign-in ------------------------------------------------------------------------------

def _sign_in_form(status: int = 200, message: str | None = None,
                  notice: str | None = None) -> BaseResponse:
    form_token = secrets.token_urlsafe(32)
    response = _page("sign_in.html", status, form_token=form_token, message=message,
                     notice=notice, next=_safe_next(request.values.get("next")))
    _set_cookie(response, CSRF_COOKIE, form_token, max_age=3600)
    return response


@bp.get("/sign-in")
def sign_in() -> BaseResponse:
    """The sign-in form (or, when already signed in, where the agent was going)."""
    if g.console_session is not None:
        return redirect(_safe_next(request.args.get("next")), 303)
    reason = request.args.get("reason")
    notice = {"signed_out": "sign_in.signed_out",
              "session": "sign_in.session_ended"}.get(reason or "")
    return _sign_in_form(notice=notice)


@bp.post("/sign-in")
def sign_in_submit() -> BaseResponse:
    """Check the key once, open a session, and set its cookie."""
    given = request.form.get("csrf_token", "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    if not given or not expected or not hmac.compare_digest(given, expected):
        return _sign_in_form(400, message="sign_in.expired_form")
    key = request.form.get("api_key", "")
    if not key.strip():
        return _sign_in_form(422, message="sign_in.empty")
    svc = services()
    try:
        with svc.pool.connection() as conn:
            token, api_key = console_sessions.sign_in(conn, svc.settings, key)
            if old := request.cookies.get(SESSION_COOKIE):  # signing in again: end the old one
                console_sessions.sign_out(conn, old)
    except SignInError as exc:
        log.info("console sign-in refused", extra={"reason": exc.reason})
        status, message = (403, "sign_in.scope") if exc.reason == "scope" \
            else (401, "sign_in.invalid")
        return _sign_in_form(status, message=message)
    log.info("console sign-in", extra={"key_id": api_key.id})
    response = redirect(_safe_next(request.form.get("next")), 303)
    _set_cookie(response, SESSION_COOKIE, token, max_age=svc.settings.console_session_hours
                * 3600)
    response.delete_cookie(CSRF_COOKIE, path=COOKIE_PATH)
    return response


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    """End the session (CSRF-checked: a third-party page cannot sign an agent out)."""
    session = g.console_session
    if session is not None:
        _check_csrf(session.csrf_token)
        with services().pool.connection() as conn:
            console_sessions.sign_out(conn, request.cookies.get(SESSION_COOKIE, ""))
        log.info("console sign-out", extra={"key_id": session.key_id})
    response = redirect(url_for("console.sign_in", reason="signed_out"), 303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


@bp.get("/sign-out")
def sign_out_page() -> BaseResponse:
    """A GET cannot sign out (that would be a CSRF hole); go home, where the button is."""
    return redirect(url_for("console.home"), 303)


@bp.get("/language/<code>")
def language(code: str) -> BaseResponse:
    """The visible language switch: remember the choice in a cookie for a year."""
    if code not in LANGUAGES:
        abort(404)
    response = redirect(_safe_next(request.args.get("next")), 303)
    _set_cookie(response, LANG_COOKIE, code, max_age=365 * 86400)
    return response


# --- pages --------------------------------------------------------------------------------

@bp.get("/")
@signed_in
def home() -> BaseResponse:
    """The lookup page: one search box, and which run the scores come from."""
    with services().reader.connection() as conn:
        run = dashboard.live_brief(conn)
    return _page("home.html", run=run)


@bp.post("/search")
@signed_in
def search() -> BaseResponse:
    """One search box: id, email, phone or channel account. One match opens the customer."""
    _check_csrf(g.console_session.csrf_token)
    query = request.form.get("q", "").strip()
    if not query:
        return _page("home.html", 422, run=None, message="search.empty")
    matches = []
    if len(query) <= MAX_QUERY:
        svc = services()
        with svc.reader.connection() as conn:
            matches = profiles.find(conn, query, country_code=svc.settings.phone_country_code,
                                    limit=profiles.MAX_SEARCH_RESULTS + 1)
    # An audit trail without personal data: who searched, and how many matched (not what).
    log.info("console search", extra={"key_id": g.console_session.key_id,
                                      "matches": len(matches)})
    if len(matches) == 1:
        return redirect(url_for("console.customer",
                                customer_id=matches[0]["customer_id"]), 303)
    shown = matches[:profiles.MAX_SEARCH_RESULTS]
    if len(shown) > 1:
        # A results page shows contact details too: log whose, as references.
        log.info("console customers listed", extra={
            "key_id": g.console_session.key_id,
            "customer_refs": [erasure.customer_ref(svc.settings, m["customer_id"])
                              for m in shown]})
        # The tier each customer's own page would show (maybe provisional).
        with svc.reader.connection() as conn:
            for match in shown:
                found = profiles.lookup(conn, match["customer_id"])
                scores = (found or {}).get("scores") or {}
                match["tier"], match["value_segment"] = scores.get("tier"), \
                    scores.get("value_segment")
                match["provisional"] = bool(found and found["provisional"] and scores)
    return _page("search.html", 200 if matches else 404, query=query, matches=shown,
                 more=len(matches) > len(shown))


@bp.get("/customers/<customer_id:customer_id>")
@signed_in
def customer(customer_id: str) -> BaseResponse:
    """Everything an agent needs on one screen: tier, value, risk, what to offer, orders."""
    try:
        check_customer_id(customer_id)
    except ValidationError:
        found = None
    else:
        with services().reader.connection() as conn:
            found = profiles.lookup(conn, customer_id, profile=True)
    if found is None:
        return _page("not_found.html", 404, customer_id=customer_id)
    # Which key saw whose personal data: the customer as their pseudonymous reference (the
    # customer_ref of events and erasure), never the id.
    log.info("console customer viewed", extra={
        "key_id": g.console_session.key_id,
        "customer_ref": erasure.customer_ref(services().settings, found["customer_id"])})
    # An alias (a merged id) shows its survivor, saying so.
    return _page("customer.html", customer_id=found["customer_id"], asked=customer_id,
                 found=found, scores=found["scores"] or {}, run=found["run"])


@bp.get("/dashboard")
@signed_in
def dashboard_page() -> BaseResponse:
    """Tiers, moves, CLV spread, segments, diagnostics plots and run history."""
    with services().reader.connection() as conn:
        data = dashboard.overview(conn)
    return _page("dashboard.html", live=data["live"], runs=data["runs"])


@bp.get("/runs/<int:run_id>/plots/<name>.svg")
@signed_in
def plot(run_id: int, name: str) -> BaseResponse:
    """A run's diagnostics plot (rendered when published; see crm_service.scoring.plots).

    The language is in the URL (``?lang=``, else the page's), so a cached image never shows
    the other language.
    """
    lang = request.args.get("lang", g.lang)
    if name not in PLOTS or lang not in PLOT_LANGUAGES:
        abort(404)
    with services().reader.connection() as conn:
        svg = run_plot(conn, run_id, name, lang)
    if svg is None:
        abort(404)
    return Response(svg, mimetype="image/svg+xml",
                    headers={"Cache-Control": "private, max-age=3600"})


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> BaseResponse:
    """Any other console URL: an HTML 404, not the API's problem+json."""
    abort(404)


# --- errors: HTML pages, not problem+json ------------------------------------------------

@bp.errorhandler(CsrfError)
def _csrf(_exc: CsrfError) -> BaseResponse:
    return _page("error.html", 400, message="error.csrf")


@bp.errorhandler(HTTPException)
def error_page(exc: HTTPException) -> BaseResponse:
    """An HTTP error as the console's HTML page (``Allow`` kept on a 405)."""
    status = exc.code or 500
    message = "error.not_found" if status == 404 else "error.request" if status < 500 \
        else "error.internal"
    response = _page("error.html", status, message=message)
    _protect(response)  # also when rendered by the app's handler, outside the blueprint
    allow = exc.get_response().headers.get("Allow")
    if status == 405 and allow:
        response.headers["Allow"] = allow
    return response


def _database_down(_exc: Exception) -> BaseResponse:
    log.warning("console: database unavailable")
    response = _page("error.html", 503, message="error.db")
    response.headers["Retry-After"] = "5"
    return response


for _kind in (*DatabaseUnavailable, DatabaseUnavailableError):
    bp.register_error_handler(_kind, _database_down)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> BaseResponse:
    route = request.url_rule.rule if request.url_rule else "(no route)"
    log.exception("unhandled console error on %s %s", request.method, route)
    return _page("error.html", 500, message="error.internal")
