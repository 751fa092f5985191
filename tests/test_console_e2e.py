"""The console in a real browser: headless Chromium (Debian's) driven by Playwright, against a
real ``crm-service serve`` holding the scored CDNOW demo data.

Screenshots of every step land in ``test-artifacts/console/`` (``CRM_TEST_ARTIFACTS`` moves it).
Without Chromium these tests skip, saying how to install it; ``.ci/run`` installs it and sets
``CRM_REQUIRE_BROWSER=1``, under which a missing browser is a failure instead.
"""

import json
import os
import shutil
import urllib.request
from datetime import date
from pathlib import Path

import psycopg
import pytest

from crm_service.access import api_keys
from crm_service.platform.demo import load_cdnow_sample, load_demo_profiles
from crm_service.scoring import run_scoring
from tests.conftest import TABLES
from tests.test_serve import serving

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CRM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CRM_TEST_ARTIFACTS", "test-artifacts")) / "console"
LAPTOP = {"width": 1366, "height": 768}
# As root in a container: no sandbox; and no calls home (the network is closed).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        message = (f"no Chromium at {CHROMIUM}: install Debian's with `apt-get install -y "
                   "chromium` (or set CRM_CHROMIUM)")
        if os.environ.get("CRM_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def site(dsn, settings, tmp_path_factory):
    """A served, scored demo base (two runs, so there are tier moves) and two keys."""
    _browser_or_skip()
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE scoring_state SET active_run_id = NULL")
        conn.execute(f"TRUNCATE {TABLES}")
        conn.execute("DELETE FROM scoring_runs")
        conn.execute("DELETE FROM tier_policies")
        conn.commit()
        load_cdnow_sample(conn, settings)
        load_demo_profiles(conn, settings)
        conn.commit()
        run_scoring(conn, settings, as_of=date(1998, 3, 31))
        run_scoring(conn, settings, as_of=date(1998, 6, 30))
        # A customer with a profile but no order yet, and two who share an email.
        conn.execute("INSERT INTO customers (customer_id, name, email, email_normalized)"
                     " VALUES ('walk-in-0001', 'Walk-in', 'walkin@example.com',"
                     " 'walkin@example.com')")
        conn.execute("UPDATE customers SET email = 'family@example.com', email_normalized ="
                     " 'family@example.com' WHERE customer_id IN ('cdnow-0001', 'cdnow-0002')")
        _, agent = api_keys.create_key(conn, "agent-li", ["customers:read"])
        _, admin = api_keys.create_key(conn, "admin", ["admin"])
        _, scores_only = api_keys.create_key(conn, "scores-only", ["scores:read"])
        conn.commit()
    with serving(dsn, tmp_path_factory.mktemp("e2e")) as (base, _proc):
        yield {"base": base, "agent": agent, "admin": admin, "scores_only": scores_only}


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, request):
    """A fresh browser profile (no cookies) on a 1366x768 laptop screen, in English."""
    context = browser.new_context(viewport=LAPTOP, locale="en-US")
    context.set_default_timeout(15_000)
    tab = context.new_page()
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        tab.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()


def shot(tab, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def sign_in(tab, site, key: str) -> None:
    tab.goto(site["base"] + "/console/")
    tab.get_by_label("API key").fill(key)
    with tab.expect_navigation():
        tab.get_by_role("button", name="Sign in").click()


def search(tab, text: str, box: str = "#q") -> None:
    tab.fill(box, text)
    with tab.expect_navigation():
        tab.press(box, "Enter")


def api(site, path: str) -> dict:
    req = urllib.request.Request(site["base"] + path,
                                 headers={"Authorization": f"Bearer {site['admin']}"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - our own test server
        return json.loads(r.read())


def no_sideways_scroll(tab) -> bool:
    return tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_sign_in_bad_key_then_good_key(page, site):
    page.goto(site["base"] + "/console/dashboard")
    assert page.url.startswith(site["base"] + "/console/sign-in")
    shot(page, "01-sign-in")
    page.get_by_label("API key").fill("crm_nosuchkey_" + "x" * 43)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == \
        "That API key is not valid, or it has been revoked."
    assert page.get_by_label("API key").input_value() == ""
    shot(page, "02-bad-key")
    page.get_by_label("API key").fill(site["scores_only"])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    assert "lacks the customers:read scope" in page.get_by_role("alert").inner_text()
    page.get_by_label("API key").fill(site["agent"])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    # Back where the agent was going, with the key nowhere in the URL or the page.
    assert page.url == site["base"] + "/console/dashboard"
    assert site["agent"] not in page.url and site["agent"] not in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "crm_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""  # nothing readable from page scripts


def test_lookup_by_id_then_by_email_with_the_keyboard_only(page, site):
    sign_in(page, site, site["agent"])
    # The search box has the focus on arrival: type the id and press Enter.
    # (autofocus applies at the next rendering step, so wait for it rather than race it)
    page.wait_for_function("document.activeElement && document.activeElement.id === 'q'",
                           timeout=5_000)
    page.keyboard.type("cdnow-0042")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/console/customers/cdnow-0042")
    assert page.get_by_role("heading", level=1).inner_text().startswith("Customer cdnow-0042")
    # Tab from the top: the skip link first, then on to the header's search box.
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "q-top":
            break
    assert page.evaluate("document.activeElement.id") == "q-top"
    # A visible focus ring on the focused control.
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.type("CDNOW-0007@example.com")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/console/customers/cdnow-0007")
    shot(page, "03-found-by-email")


def test_unknown_customer(page, site):
    sign_in(page, site, site["agent"])
    search(page, "nobody@example.com")
    assert page.get_by_role("heading", level=1).inner_text() == "No customer found"
    assert "No customer matches “nobody@example.com”" in page.get_by_role("status").inner_text()
    shot(page, "04-unknown-customer")
    page.goto(site["base"] + "/console/customers/no-such-customer")
    assert page.get_by_role("heading", level=1).inner_text() == "No such customer"


def test_customer_page_content_on_a_laptop_screen(page, site):
    sign_in(page, site, site["agent"])
    # A high-value customer: the VIP script.
    vip = api(site, "/v1/customers?tier=high_value&sort=-clv_12m&limit=1")["items"][0]
    search(page, f"tmall/tb_{vip['customer_id'][-4:]}")
    expected = api(site, f"/v1/customers/{vip['customer_id']}")
    s = expected["scores"]
    shot(page, "05-customer-vip")
    badge = page.locator(".tierline .badge")
    assert badge.inner_text() == "High value"
    assert page.locator(".since").inner_text() == f"since {expected['tier_since']}"

    def card(label: str) -> str:
        return page.locator(".cards > div", has_text=label).locator("dd").inner_text()

    assert card("Value segment") == {"high": "High", "medium": "Medium", "low": "Low"}[
        expected["value_segment"]]
    assert card("RFM segment").split("\n")[0] != ""
    assert card("12-month CLV").startswith(f"{s['clv_12m']:,.2f}")
    assert card("P(alive)") == f"{s['p_alive'] * 100:.0f}%"
    assert card("Churn probability").startswith(f"{s['churn_probability'] * 100:.0f}%")
    assert s["churn_risk"] in card("Churn probability")
    next_order = card("Expected next order")
    assert next_order == (s["expected_next_order"] or "none expected")
    action = page.locator(".action")
    assert "VIP care" in action.inner_text() and "priority line" in action.inner_text()
    orders = page.get_by_role("table").first
    assert "web" in orders.inner_text()
    assert page.get_by_role("heading", name="Tier history").is_visible()
    # Readable on 1366x768: nothing scrolls sideways, and the tier, numbers and the action are
    # on the first screen.
    assert no_sideways_scroll(page)
    for box in (badge, page.locator(".cards"), action):
        bottom = box.bounding_box()
        assert bottom is not None and bottom["y"] + bottom["height"] <= LAPTOP["height"]


def test_dashboard_with_plots(page, site):
    sign_in(page, site, site["agent"])
    page.get_by_role("link", name="Dashboard").click()
    page.wait_for_load_state("networkidle")
    assert page.get_by_role("heading", level=1).inner_text() == "State of the customer base"
    for heading in ("Tiers", "Tier moves since the previous run", "CLV distribution",
                    "Value segments", "RFM segments", "Run history"):
        assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
    images = page.locator(".plots img")
    assert images.count() == 3
    for i in range(3):
        loaded = images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
        assert loaded, images.nth(i).get_attribute("src")
    assert page.locator(".runs tbody tr").count() == 2
    assert no_sideways_scroll(page)
    shot(page, "06-dashboard", full_page=True)


def test_language_switch(page, site, browser):
    sign_in(page, site, site["agent"])
    search(page, "cdnow-0042")
    page.get_by_role("link", name="简体中文").click()
    page.wait_for_load_state()
    assert page.url.endswith("/console/customers/cdnow-0042")
    assert page.evaluate("document.documentElement.lang") == "zh-Hans"
    assert page.get_by_role("heading", name="各渠道订单").is_visible()
    assert "建议动作" in page.locator(".action").inner_text()
    shot(page, "07-customer-zh")
    page.get_by_role("link", name="English").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Orders by channel").is_visible()
    # A browser set to Chinese gets Chinese from the first page.
    zh = browser.new_context(viewport=LAPTOP, locale="zh-CN")
    try:
        tab = zh.new_page()
        tab.goto(site["base"] + "/console/")
        assert tab.get_by_role("heading", level=1).inner_text() == "登录"
        shot(tab, "08-sign-in-zh")
    finally:
        zh.close()


def test_sign_out(page, site):
    sign_in(page, site, site["agent"])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert "You are signed out." in page.get_by_role("status").inner_text()
    page.goto(site["base"] + "/console/dashboard")
    assert page.url.startswith(site["base"] + "/console/sign-in")


def test_no_accessibility_violations(page, site):
    """axe-core (the engine of Lighthouse's accessibility audit) finds nothing on any page."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found: dict[str, list[str]] = {}

    def audit(name: str) -> None:
        result = axe.run(page).response
        assert len(result["passes"]) > 10, name  # axe really ran
        found[name] = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
                       for v in result["violations"]]

    page.goto(site["base"] + "/console/")
    audit("sign-in")
    sign_in(page, site, site["agent"])
    audit("lookup")
    search(page, "cdnow-0042")
    audit("customer")
    search(page, "nobody@example.com", box="#q-top")
    audit("not found")
    search(page, "walkin@example.com", box="#q-top")
    assert "Not scored" in page.get_by_role("status").inner_text()
    audit("customer without scores")
    search(page, "family@example.com", box="#q-top")
    assert page.get_by_role("heading", level=1).inner_text().startswith("2 customers match")
    audit("several matches")
    page.goto(site["base"] + "/console/no-such-page")
    audit("error page")
    page.goto(site["base"] + "/console/dashboard")
    page.wait_for_load_state("networkidle")
    audit("dashboard")
    page.get_by_role("link", name="简体中文").click()
    page.wait_for_load_state("networkidle")
    audit("dashboard (zh-Hans)")
    plot = page.locator(".plots img").first
    assert "lang=zh-Hans" in plot.get_attribute("src")
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0")
    shot(page, "09-dashboard-zh", full_page=True)
    assert found == {name: [] for name in found}
