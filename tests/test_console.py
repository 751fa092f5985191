"""The agent console through real HTTP requests to the app: sessions, CSRF, lookup, dashboard.

The browser-level checks (rendering, keyboard, screen size) are in test_console_e2e.py.
"""

import hashlib
import logging
import re
import string
from datetime import date

import pytest

from api.console.i18n import LANGUAGES, MESSAGES, negotiate, translate
from crm_service.access import api_keys
from crm_service.platform.demo import load_demo_profiles
from crm_service.scoring import run_scoring
from tests.conftest import count, q

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture()
def demo(cdnow_loaded, settings):
    """The CDNOW orders with the demo's made-up contact details and channel accounts."""
    load_demo_profiles(cdnow_loaded, settings)
    cdnow_loaded.commit()
    return cdnow_loaded


@pytest.fixture()
def scored(demo, settings):
    return run_scoring(demo, settings, as_of=date(1998, 6, 30))


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client, token, next_path="/console/"):
    form = client.get("/console/sign-in")
    return client.post("/console/sign-in", data={
        "csrf_token": csrf_of(form.text), "api_key": token, "next": next_path})


def set_cookies(response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.getlist("Set-Cookie")}


def search(client, text):
    page = client.get("/console/")
    return client.post("/console/search", data={"csrf_token": csrf_of(page.text), "q": text})


# --- sign-in and the session cookie ------------------------------------------------------

def test_pages_need_a_session_and_come_back_after_sign_in(client, conn, make_token):
    r = client.get("/console/dashboard")
    assert r.status_code == 303
    assert r.headers["Location"] == "/console/sign-in?next=/console/dashboard"
    form = client.get(r.headers["Location"])
    assert form.status_code == 200 and 'type="password"' in form.text
    # The pre-session CSRF cookie is HttpOnly, SameSite=Strict, scoped to the console.
    cookie = set_cookies(form)["crm_console_csrf"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    token = make_token("customers:read")
    r = client.post("/console/sign-in", data={"csrf_token": csrf_of(form.text),
                                              "api_key": token, "next": "/console/dashboard"})
    assert r.status_code == 303 and r.headers["Location"] == "/console/dashboard"
    session = set_cookies(r)["crm_console"]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/console" in session
    # The browser holds a random token, the database only its hash; the key is never echoed.
    value = session.split(";")[0].split("=", 1)[1]
    assert token not in r.text and token not in r.headers.get("Location", "")
    stored = q(conn, "SELECT token_hash, key_id FROM console_sessions")
    assert stored == [(hashlib.sha256(value.encode()).digest(), token.split("_")[1])]
    assert client.get("/console/dashboard").status_code == 200


def test_session_cookie_is_secure_over_https(app, conn, make_token):
    client = app.test_client()
    token = make_token("customers:read")
    form = client.get("/console/sign-in", base_url="https://crm.example")
    r = client.post("/console/sign-in", base_url="https://crm.example", data={
        "csrf_token": csrf_of(form.text), "api_key": token})
    assert r.status_code == 303
    assert "Secure" in set_cookies(r)["crm_console"]
    assert "Secure" in set_cookies(form)["crm_console_csrf"]
    assert form.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize(("policy", "base", "secure"), [
    ("auto", "http://localhost", False), ("auto", "http://127.0.0.1:8000", False),
    ("auto", "http://[::1]:8000", False),
    # A public name over "http": TLS ended at a proxy that did not say so. Still Secure.
    ("auto", "http://crm.example", True), ("auto", "http://10.0.0.5:8000", True),
    ("always", "http://localhost", True), ("never", "https://crm.example", False),
])
def test_secure_cookie_policy(settings, dsn, conn, policy, base, secure):
    from dataclasses import replace

    from api import create_app

    client = create_app(replace(settings, console_secure_cookies=policy), dsn=dsn).test_client()
    form = client.get("/console/sign-in", base_url=base)
    assert ("Secure" in set_cookies(form)["crm_console_csrf"]) is secure


@pytest.mark.parametrize(("scopes", "status", "message"), [
    (None, 401, "not valid, or it has been revoked"),
    (("scores:read",), 403, "lacks the customers:read scope"),
])
def test_a_bad_key_gets_a_clear_message_and_no_session(client, conn, make_token, scopes,
                                                       status, message):
    token = make_token(*scopes) if scopes else "crm_nosuchkey_" + "x" * 43
    r = sign_in(client, token)
    assert r.status_code == status and message in r.text
    assert "crm_console" not in set_cookies(r)
    assert token not in r.text  # the field is not refilled
    assert count(conn, "SELECT count(*) FROM console_sessions") == 0


def test_sign_in_without_the_form_token_is_refused(client, conn, make_token):
    token = make_token("customers:read")
    client.get("/console/sign-in")
    r = client.post("/console/sign-in", data={"csrf_token": "forged", "api_key": token})
    assert r.status_code == 400 and "form expired" in r.text
    r = client.post("/console/sign-in", data={"api_key": token})
    assert r.status_code == 400
    assert count(conn, "SELECT count(*) FROM console_sessions") == 0
    empty = client.post("/console/sign-in", data={"csrf_token": csrf_of(r.text), "api_key": " "})
    assert empty.status_code == 422 and "Enter an API key" in empty.text


def test_signing_in_again_ends_the_previous_session(client, conn, make_token):
    first = make_token("customers:read")
    sign_in(client, first)
    api_keys.revoke_key(conn, first.split("_")[1])  # its session stops working...
    conn.commit()
    sign_in(client, make_token("admin"))  # ...and signing in again removes it
    assert q(conn, "SELECT 'admin' = ANY(k.scopes) FROM console_sessions s"
                   " JOIN api_keys k ON k.id = s.key_id") == [(True,)]


def test_a_search_after_the_session_ended_returns_to_the_lookup_page(client, conn, make_token):
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/")
    conn.execute("DELETE FROM console_sessions")
    conn.commit()
    r = client.post("/console/search", data={"csrf_token": csrf_of(page.text), "q": "x"})
    assert r.status_code == 303 and "next=" not in r.headers["Location"]
    r = sign_in(client, make_token("customers:read"), next_path="")
    assert r.headers["Location"] == "/console/"


def test_revoking_the_key_ends_its_sessions_at_once(client, conn, make_token):
    token = make_token("customers:read")
    sign_in(client, token)
    assert client.get("/console/").status_code == 200
    api_keys.revoke_key(conn, token.split("_")[1])
    conn.commit()
    r = client.get("/console/")
    assert r.status_code == 303 and "reason=session" in r.headers["Location"]


def test_idle_and_old_sessions_end(client, conn, make_token, settings):
    sign_in(client, make_token("customers:read"))
    conn.execute("UPDATE console_sessions SET last_seen_at = now() - make_interval(mins => %s)",
                 (settings.console_idle_minutes + 1,))
    conn.commit()
    assert client.get("/console/").status_code == 303
    sign_in(client, make_token("admin"))
    conn.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    conn.commit()
    assert client.get("/console/").status_code == 303
    # An expired session is swept at the next sign-in.
    sign_in(client, make_token("admin"))
    assert count(conn, "SELECT count(*) FROM console_sessions") == 1


def test_sign_out_needs_the_csrf_token_and_deletes_the_session(client, conn, make_token):
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/")
    assert client.get("/console/sign-out").headers["Location"] == "/console/"  # GET: no-op
    forged = client.post("/console/sign-out", data={"csrf_token": "forged"})
    assert forged.status_code == 400
    assert count(conn, "SELECT count(*) FROM console_sessions") == 1
    r = client.post("/console/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303 and "reason=signed_out" in r.headers["Location"]
    assert "crm_console=;" in set_cookies(r)["crm_console"]
    assert count(conn, "SELECT count(*) FROM console_sessions") == 0
    assert "You are signed out" in client.get(r.headers["Location"]).text


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/v1/customers", "/console\\@evil.example"])
def test_no_open_redirect_after_sign_in_or_language_switch(client, conn, make_token, target):
    r = client.get("/console/language/zh-Hans", query_string={"next": target})
    assert r.headers["Location"] == "/console/"
    r = sign_in(client, make_token("customers:read"), next_path=target)
    assert r.headers["Location"] == "/console/"


# --- lookup --------------------------------------------------------------------------------

def test_one_search_box_finds_by_id_email_phone_and_channel_account(scored, client, make_token):
    sign_in(client, make_token("customers:read"))
    for text in ("cdnow-0004", "CDNOW-0004@Example.com", "+86 138-0000-0004",
                 "0086 13800000004", "tmall/tb_0004", "Tmall / tb_0004", "tb_0004"):
        r = search(client, text)
        assert r.status_code == 303, text
        assert r.headers["Location"] == "/console/customers/cdnow-0004", text
    # Searches are POSTs: what the agent typed never appears in a URL.
    assert "example.com" not in r.headers["Location"]


def test_national_phone_numbers_with_a_country_code(scored, settings, dsn, make_token):
    from dataclasses import replace

    from api import create_app
    client = create_app(replace(settings, phone_country_code="86"), dsn=dsn).test_client()
    sign_in(client, make_token("customers:read"))
    for text in ("138 0000 0004", "86 138 0000 0004", "0086 138 0000 0004",
                 "+86 138-0000-0004"):
        r = search(client, text)
        assert r.headers.get("Location") == "/console/customers/cdnow-0004", text


def test_several_matches_are_listed_and_none_is_a_404_page(scored, client, conn, make_token,
                                                           settings, caplog):
    conn.execute("UPDATE customers SET email = 'family@example.com',"
                 " email_normalized = 'family@example.com'"
                 " WHERE customer_id IN ('cdnow-0001', 'cdnow-0002')")
    conn.commit()
    # cdnow-0002 bought again after the run: listed with the tier its own page shows.
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert client.post("/v1/orders", headers=admin, json={"orders": [{
        "order_id": "late-1", "customer_id": "cdnow-0002", "channel": "tmall",
        "ordered_at": "1998-07-02", "amount": "50.00"}]}).status_code == 200
    sign_in(client, make_token("customers:read"))
    with caplog.at_level(logging.INFO):
        r = search(client, "family@example.com")
    assert r.status_code == 200
    assert "2 customers match" in r.text
    # The audit trail names whose contact details the page showed, as references.
    from crm_service.privacy.erasure import customer_ref

    listed = [r.customer_refs for r in caplog.records
              if r.getMessage() == "console customers listed"]
    assert listed == [[customer_ref(settings, "cdnow-0001"), customer_ref(settings, "cdnow-0002")]]
    assert r.text.count('href="/console/customers/cdnow-000') == 2
    assert r.text.count("(provisional)") == 1
    page = client.get("/console/customers/cdnow-0002").text
    row = r.text[r.text.index("cdnow-0002"):]
    tier = re.search(r'class="badge tier-(\w+)"', page).group(1)
    assert re.search(r'class="badge tier-(\w+)"', row).group(1) == tier
    r = search(client, "nobody@example.com")
    assert r.status_code == 404 and "No customer found" in r.text
    assert search(client, "  ").status_code == 422
    # More than 20 matches: the first 20, saying there are more.
    conn.execute("UPDATE customers SET email = 'shop@example.com',"
                 " email_normalized = 'shop@example.com' WHERE customer_id < 'cdnow-0030'")
    conn.commit()
    r = search(client, "shop@example.com")
    assert "20+ customers match" in r.text and "Showing the first 20" in r.text
    assert r.text.count('href="/console/customers/cdnow-00') == 20
    assert search(client, "x" * 300).status_code == 404
    page = client.get("/console/")
    forged = client.post("/console/search", data={"csrf_token": "forged", "q": "cdnow-0004"})
    assert forged.status_code == 400 and page.status_code == 200


def test_customer_page_shows_what_the_api_says(scored, client, make_token, auth):
    api = client.get("/v1/customers/cdnow-0042", headers=auth).json
    sign_in(client, make_token("customers:read"))
    r = client.get("/console/customers/cdnow-0042")
    assert r.status_code == 200
    page = r.text
    s = api["scores"]
    assert f'tier-{api["tier"]}' in page
    assert f'since {api["tier_since"]}' in page
    assert f'{s["clv_12m"]:,.2f}' in page
    assert f'{s["p_alive"] * 100:.0f}%' in page
    assert f'{s["churn_probability"] * 100:.0f}%' in page
    assert api["contact"]["email"] in page and api["contact"]["name"] in page
    assert "Recommended action" in page and "What to say" in page
    assert "Orders by channel" in page and "Tier history" in page


def test_unknown_customer_is_an_html_404(scored, client, make_token):
    sign_in(client, make_token("customers:read"))
    r = client.get("/console/customers/no-such-one")
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert "There is no customer with id" in r.text
    r = client.get("/console/nowhere")
    assert r.status_code == 404 and r.mimetype == "text/html"
    # A method the page does not take: still the console's HTML, with Allow.
    r = client.put("/console/dashboard")
    assert r.status_code == 405 and r.mimetype == "text/html"
    assert "cannot be handled" in r.text and "GET" in r.headers["Allow"]
    assert r.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert client.delete("/console").mimetype == "text/html"


def test_searches_leave_no_personal_data_in_the_logs(scored, client, make_token, caplog,
                                                     settings):
    from crm_service.platform.demo import demo_profile

    person = demo_profile(4)
    sign_in(client, make_token("customers:read"))
    with caplog.at_level(logging.DEBUG):
        search(client, "cdnow-0004@example.com")
        search(client, "+86 138 0000 0004")
        search(client, str(person["name"]))
        client.get("/console/customers/cdnow-0004")
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    # The audit trail: which key viewed whom, as the customer's pseudonymous reference.
    from crm_service.privacy.erasure import customer_ref

    viewed = [r for r in caplog.records if r.getMessage() == "console customer viewed"]
    assert [r.customer_ref for r in viewed] == [customer_ref(settings, "cdnow-0004")]
    assert viewed[0].key_id
    searches = [r.matches for r in caplog.records if r.getMessage() == "console search"]
    assert searches == [1, 1, 0]
    for secret in ("cdnow-0004@example.com", "0000 0004", "8613800000004", "13800000004",
                   str(person["name"]), "tb_0004"):
        assert secret not in text, secret
    assert "cdnow-0004" not in text  # the route template is logged, not the path


# --- dashboard ----------------------------------------------------------------------------

def test_dashboard_marks_a_dry_run_as_never_published(demo, settings, client, make_token):
    live = run_scoring(demo, settings, as_of=date(1998, 3, 31))
    dry = run_scoring(demo, settings, as_of=date(1998, 6, 30), dry_run=True)
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/dashboard").text
    runs = page[page.index('<table class="runs">'):]
    row = runs[runs.index(f'<th scope="row">{dry.run_id}'):]
    row = row[:row.index("</tr>")]
    assert "dry run" in row and "not published; scores not kept" in row
    assert 'class="badge live"' not in row
    assert f'<th scope="row">{live.run_id} <span class="badge live">' in runs
    client.set_cookie("crm_lang", "zh-Hans")
    zh = client.get("/console/dashboard").text
    assert "试运行" in zh and "未发布，不保留评分" in zh


def test_dashboard_shows_tiers_moves_clv_spread_segments_plots_and_runs(
        demo, settings, client, make_token):
    run_scoring(demo, settings, as_of=date(1998, 3, 31))
    live = run_scoring(demo, settings, as_of=date(1998, 6, 30))
    counts = live.counts
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/dashboard").text
    for tier, n in counts["tiers"].items():
        assert f"{n:,}" in page, tier
    assert "Tier moves since the previous run" in page and "first run" not in page
    moved = counts["tier_transition_matrix"]["active"]["dormant"]
    assert f">{moved:,}<" in page
    assert len(counts["clv_deciles"]) == 10
    top = counts["clv_deciles"][0]
    assert f'{top["share"] * 100:.1f}%' in page
    assert "Champions" in page and "Value segments" in page
    plots = re.findall(r'<img src="(/console/runs/\d+/plots/\w+\.svg)\?lang=en"', page)
    assert len(plots) == 3
    svg = client.get(plots[2] + "?lang=en")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert svg.data.startswith(b"<?xml") and b"<script" not in svg.data
    assert "end of calibration" in svg.text  # text, not glyph outlines: the browser's fonts
    zh = client.get(plots[2] + "?lang=zh-Hans")
    assert "校准期结束" in zh.text and "end of calibration" not in zh.text
    assert client.get(plots[2] + "?lang=fr").status_code == 404
    # Both runs, with their churn model against the baseline.
    assert page.count('class="status status-succeeded"') == 2
    ml = live.models["churn"]["validation"]["ml"]["roc_auc"]
    assert f"{ml:.3f}" in page


def test_dashboard_before_any_run_and_plots_need_a_session(client, conn, make_token):
    assert client.get("/console/runs/1/plots/tracking.svg").status_code == 303
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/dashboard")
    assert page.status_code == 200 and "No scoring run has been published yet" in page.text
    assert client.get("/console/runs/999/plots/tracking.svg").status_code == 404
    assert client.get("/console/runs/999/plots/nope.svg").status_code == 404


# --- every page -------------------------------------------------------------------------

def test_pages_forbid_scripts_and_caching(scored, client, make_token):
    sign_in(client, make_token("customers:read"))
    for path in ("/console/", "/console/dashboard", "/console/customers/cdnow-0004",
                 "/console/sign-in", "/console/customers/nobody"):
        r = client.get(path)
        assert r.headers["Cache-Control"] == "no-store", path
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script" not in csp and "frame-ancestors 'none'" \
            in csp, path
        assert "<script" not in r.text, path
        assert float(r.headers["Server-Timing"].split("dur=")[1]) > 0


# --- languages ----------------------------------------------------------------------------

def test_language_from_the_browser_and_the_switch(scored, client, make_token):
    sign_in(client, make_token("customers:read"))
    zh = client.get("/console/customers/cdnow-0004", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert '<html lang="zh-Hans">' in zh.text and "建议动作" in zh.text
    en = client.get("/console/customers/cdnow-0004", headers={"Accept-Language": "de, en;q=0.5"})
    assert '<html lang="en">' in en.text and "Recommended action" in en.text
    r = client.get("/console/language/zh-Hans", query_string={
        "next": "/console/customers/cdnow-0004"})
    assert r.headers["Location"] == "/console/customers/cdnow-0004"
    assert "crm_lang=zh-Hans" in set_cookies(r)["crm_lang"]
    # The switch beats the browser's preference.
    page = client.get("/console/customers/cdnow-0004", headers={"Accept-Language": "en"})
    assert "建议动作" in page.text
    assert client.get("/console/language/fr").status_code == 404


def test_every_text_has_both_languages_with_the_same_placeholders():
    fields = string.Formatter()
    for key, (en, zh) in MESSAGES.items():
        assert en.strip() and zh.strip(), key
        assert {f for _, f, _, _ in fields.parse(en) if f} == \
            {f for _, f, _, _ in fields.parse(zh) if f}, key
    from models import segments

    names = [f"tier.{n}" for n in segments.TIERS] + [f"rfm.{n}" for n in segments.RFM_SEGMENTS] \
        + [f"value.{n}" for n in segments.VALUE_SEGMENTS] \
        + [f"{p}.{n}" for n in segments.ACTIONS for p in ("action", "script")]
    for key in names:
        assert key in MESSAGES, key
        assert MESSAGES[key][0] != MESSAGES[key][1] or key.startswith("model."), key
    assert translate("zh-Hans", "action.send_gift") == "send_gift"  # a custom action


@pytest.mark.parametrize(("cookie", "accept", "expected"), [
    (None, [], "en"), (None, ["zh-TW", "en"], "zh-Hans"), (None, ["fr", "zh"], "zh-Hans"),
    (None, ["en-GB", "zh-CN"], "en"), ("zh-Hans", ["en"], "zh-Hans"), ("xx", ["zh"], "zh-Hans"),
])
def test_language_negotiation(cookie, accept, expected):
    assert negotiate(cookie, accept) == expected
    assert expected in LANGUAGES


def test_database_down_is_a_clear_503_page(settings, tmp_path):
    """With the database unreachable: a 503 page with Retry-After, not a crash or a JSON error."""
    from dataclasses import replace

    from api import create_app

    down = replace(settings, pool_timeout_seconds=0.3, pool_min_size=0)
    app = create_app(down, dsn="postgresql://nobody@127.0.0.1:9/nowhere?connect_timeout=1")
    client = app.test_client()
    client.set_cookie("crm_console", "some-session-token", path="/console")
    r = client.get("/console/dashboard")
    assert r.status_code == 503 and r.mimetype == "text/html"
    assert r.headers["Retry-After"] == "5" and "did not answer in time" in r.text
    client.delete_cookie("crm_console", path="/console")
    form = client.get("/console/sign-in")  # needs no database
    assert form.status_code == 200
    r = client.post("/console/sign-in", data={"csrf_token": csrf_of(form.text),
                                              "api_key": "crm_abc_def"})
    assert r.status_code == 503 and "did not answer in time" in r.text
    app.extensions["crm"].pool.close()
    app.extensions["crm"].reader.close()


def test_order_dates_are_shown_in_the_reporting_time_zone(settings, dsn, conn, make_token):
    from dataclasses import replace

    from api import create_app

    client = create_app(replace(settings, timezone="Asia/Shanghai"), dsn=dsn).test_client()
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    r = client.post("/v1/orders", headers=admin, json={"orders": [{
        "order_id": "T-1", "customer_id": "C-1", "channel": "tmall",
        "ordered_at": "2024-05-01T23:30:00Z", "amount": "10.00"}]})
    assert r.status_code == 200, r.json
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/customers/C-1").text
    assert "2024-05-02" in page and "2024-05-01" not in page  # 07:30 on May 2 in Shanghai


def test_audit_fields_survive_the_text_log_format():
    from crm_service.platform.logs import TextFormatter

    record = logging.LogRecord("crm.console", logging.INFO, __file__, 1, "console customer viewed",
                               None, None)
    record.key_id, record.customer_ref = "k123", "ab12"
    line = TextFormatter().format(record)
    assert line.endswith("console customer viewed key_id=k123 customer_ref=ab12")


def test_dashboard_says_which_runs_had_their_scores_retired(demo, settings, client,
                                                            make_token):
    import dataclasses

    keep_two = dataclasses.replace(settings, keep_runs=2)
    for as_of in (date(1998, 4, 30), date(1998, 5, 31), date(1998, 6, 30)):
        run_scoring(demo, keep_two, as_of=as_of)
    sign_in(client, make_token("customers:read"))
    page = client.get("/console/dashboard").text
    assert page.count("scores retired (retention)") == 1
    client.get("/console/language/zh-Hans", query_string={"next": "/console/dashboard"})
    assert "评分明细已按保留策略清理" in client.get("/console/dashboard").text
