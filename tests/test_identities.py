"""One person across channels (issue 20): orders by channel account, linking rules, merge and
unmerge, aliases on every lookup surface, scores of the merged history, erasure, concurrency."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import date

import psycopg
import pytest

from crm_service.customers import identities
from crm_service.customers.rules import normalize_phone
from crm_service.errors import ConflictError
from crm_service.ingestion.bulk import import_customers, import_orders
from crm_service.scoring import run_scoring
from tests.conftest import count, q, write


def order(oid, *, cid=None, buyer=None, channel="tmall", at="2024-03-01T10:00:00+08:00",
          amount="100.00"):
    rec = {"order_id": oid, "channel": channel, "ordered_at": at, "amount": amount,
           "currency": "USD"}
    if cid is not None:
        rec["customer_id"] = cid
    if buyer is not None:
        rec["buyer_id"] = buyer
    return rec


def post(client, auth, path, body, status=200):
    r = client.post(path, json=body, headers=auth)
    assert r.status_code == status, r.get_json()
    return r.get_json()


# ---- 1. orders by channel identity --------------------------------------------------------

def test_rest_orders_by_buyer_id_resolve_through_the_identity_graph(client, auth, conn, settings):
    body = post(client, auth, "/v1/orders", {"orders": [
        order("T-1", buyer="tb_li"), order("T-2", buyer="tb_li"),
        order("J-1", buyer="jd_li", channel="jd")]})
    first, second, third = body["results"]
    assert first["outcome"] == second["outcome"] == third["outcome"] == "inserted"
    assert first["customer_id"].startswith("cx-") and len(first["customer_id"]) == 23
    assert second["customer_id"] == first["customer_id"]  # one account, one customer
    assert third["customer_id"] != first["customer_id"]  # another channel: another account
    # Stable: the same account in a later batch lands on the same generated customer.
    again = post(client, auth, "/v1/orders", {"orders": [order("T-3", buyer="tb_li")]})
    assert again["results"][0]["customer_id"] == first["customer_id"]
    assert identities.generated_id(identities.identity_key(settings), "tmall", "tb_li") \
        == first["customer_id"]
    assert q(conn, "SELECT customer_id FROM customer_identities WHERE channel = 'tmall'"
                   " AND external_id = 'tb_li'") == [(first["customer_id"],)]
    # A known account (linked by a profile) gives its customer.
    post(client, auth, "/v1/customers", {"customers": [{
        "customer_id": "C-7", "identities": [{"channel": "jd", "external_id": "jd_wang"}]}]})
    known = post(client, auth, "/v1/orders", {"orders": [order("J-2", buyer="jd_wang",
                                                               channel="jd")]})
    assert known["results"][0]["customer_id"] == "C-7"


def test_rest_orders_with_both_ids_are_checked_for_consistency(client, auth, conn):
    post(client, auth, "/v1/customers", {"customers": [
        {"customer_id": "C-1", "identities": [{"channel": "tmall", "external_id": "tb_1"}]},
        {"customer_id": "C-2"}]})
    body = post(client, auth, "/v1/orders", {"orders": [
        order("T-1", cid="C-1", buyer="tb_1"),       # consistent
        order("T-2", cid="C-2", buyer="tb_1"),       # tb_1 is C-1's: conflict
        order("T-3", cid="C-2", buyer="tb_new"),     # a new account: linked to C-2
        order("T-4", buyer="tb_new"),                # ... so this one is C-2's too
        order("T-5")]})                              # neither
    outcomes = [(r["outcome"], r.get("customer_id")) for r in body["results"]]
    assert outcomes[0] == ("inserted", "C-1")
    assert outcomes[1][0] == "rejected"
    assert "belongs to another customer" in body["results"][1]["errors"]["buyer_id"]
    assert outcomes[2] == ("inserted", "C-2") and outcomes[3] == ("inserted", "C-2")
    assert body["results"][4]["errors"]["customer_id"].startswith("required (or buyer_id")
    assert count(conn, "SELECT count(*) FROM orders WHERE order_id = 'T-2'") == 0


def test_csv_orders_by_buyer_id(conn, settings, tmp_path):
    conn.execute("INSERT INTO customers (customer_id) VALUES ('C-9')")
    conn.execute("INSERT INTO customer_identities VALUES ('jd', 'jd_9', 'C-9')")
    conn.commit()
    path = write(tmp_path / "o.csv", "order_id,channel,buyer_id,customer_id,ordered_at,amount\n"
                 "T-1,tmall,tb_a,,2024-01-01,10\n"
                 "T-2,tmall,tb_a,,2024-02-01,20\n"
                 "J-1,jd,jd_9,,2024-02-01,30\n"       # known: C-9
                 "J-2,jd,jd_new,C-9,2024-02-02,5\n"   # a claim of a new account: linked
                 "J-3,jd,jd_9,C-1,2024-02-03,5\n"     # conflicts with C-9: rejected
                 "J-4,jd,jd_new,,2024-02-04,5\n"      # C-9's now
                 "X-1,tmall,,,2024-02-04,5\n")         # no customer at all
    summary = import_orders(conn, settings, path)
    assert (summary.inserted, summary.rejected) == (5, 2)
    generated = identities.generated_id(identities.identity_key(settings), "tmall", "tb_a")
    owners = dict(q(conn, "SELECT order_id, customer_id FROM orders"))
    assert owners == {"T-1": generated, "T-2": generated, "J-1": "C-9", "J-2": "C-9",
                      "J-4": "C-9"}
    report = (tmp_path / "o.csv.rejects.csv").read_text()
    assert "J-3,buyer_id" in report and "belongs to another customer" in report
    assert "X-1,customer_id,required (or buyer_id" in report
    # Importing again changes nothing, and the second file's new rows resolve the same way.
    again = import_orders(conn, settings, path)
    assert (again.inserted, again.updated) == (0, 0)
    more = write(tmp_path / "p.csv", "order_id,channel,buyer_id,ordered_at,amount\n"
                 "T-9,tmall,tb_a,2024-03-01,10\nJ-9,jd,jd_new,2024-03-01,10\n")
    import_orders(conn, settings, more)
    assert dict(q(conn, "SELECT order_id, customer_id FROM orders"
                        " WHERE order_id IN ('T-9', 'J-9')")) == {"T-9": generated, "J-9": "C-9"}
    assert count(conn, "SELECT count(*) FROM customers WHERE starts_with(customer_id, 'cx-')") \
        == 1


def test_csv_profiles_keyed_by_account(conn, settings, tmp_path):
    orders = write(tmp_path / "o.csv", "order_id,channel,buyer_id,ordered_at,amount\n"
                   "T-1,tmall,tb_a,2024-01-01,10\nJ-1,jd,jd_b,2024-01-02,10\n")
    import_orders(conn, settings, orders)
    profiles = write(tmp_path / "c.csv", "channel,buyer_id,phone\n"
                     "tmall,tb_a,+86 138-0000-2222\njd,jd_b,138 0000 2222\n"
                     "pinduoduo,pdd_c,13900001111\n")
    s = replace(settings, phone_country_code="86")
    summary = import_customers(conn, s, profiles)
    assert summary.linked == {"groups": 1, "merges": 1, "merged_customers": 1, "candidates": 0}
    # The two accounts are one person now; the third is a new customer (a prospect).
    assert count(conn, "SELECT count(*) FROM customers WHERE merged_into IS NULL") == 2
    assert count(conn, "SELECT count(DISTINCT customer_id) FROM orders") == 1
    assert q(conn, "SELECT DISTINCT phone_normalized FROM customers"
                   " WHERE starts_with(phone_normalized, '+86138')") == [("+8613800002222",)]


# ---- 2. phones and linking rules ----------------------------------------------------------

@pytest.mark.parametrize("written", ["+86 138-0000-2222", "138 0000 2222", "0086 13800002222",
                                     "8613800002222", "+86 (138) 0000 2222", "13800002222"])
def test_every_written_form_of_one_number_is_one_e164_number(written):
    assert normalize_phone(written, "86") == "+8613800002222"


def test_phones_without_a_country_code_and_impossible_numbers_keep_their_digits():
    assert normalize_phone("138 0000 2222") == "13800002222"  # no country to read it in
    assert normalize_phone("+1 (650) 253-0000") == "+16502530000"
    assert normalize_phone("12345", "86") == "12345"  # not a possible number: digits kept
    assert normalize_phone("call me", "86") is None


def test_caller_id_form_finds_the_national_number(client, auth, app, conn, settings):
    """The issue's report: `138 0000 2222` stored, `+86 138-0000-2222` searched."""
    from api import create_app

    cn = create_app(replace(settings, phone_country_code="86"), dsn=settings.database_url)
    c = cn.test_client()
    post(c, auth, "/v1/customers", {"customers": [
        {"customer_id": "C-1", "phone": "138 0000 2222"}, {"customer_id": "C-2"}]})
    r = c.get("/v1/customers/search", query_string={"phone": "+86 138-0000-2222"}, headers=auth)
    assert [m["customer_id"] for m in r.get_json()["matches"]] == ["C-1"]
    for form in ("13800002222", "0086 138 0000 2222"):
        r = c.get("/v1/customers/search", query_string={"phone": form}, headers=auth)
        assert [m["customer_id"] for m in r.get_json()["matches"]] == ["C-1"]


def test_stored_phones_are_migrated_to_e164(conn, settings):
    conn.execute("INSERT INTO customers (customer_id, phone, phone_normalized) VALUES"
                 " ('A', '138 0000 2222', '13800002222'), ('B', '+86 139 0000 1111',"
                 " '+8613900001111'), ('C', NULL, NULL)")
    conn.execute("DELETE FROM phone_normalization")
    conn.commit()
    s = replace(settings, phone_country_code="86")
    assert identities.ensure_phone_scheme(conn, s) == 1
    assert dict(q(conn, "SELECT customer_id, phone_normalized FROM customers")) == {
        "A": "+8613800002222", "B": "+8613900001111", "C": None}
    assert identities.ensure_phone_scheme(conn, s) is None  # recorded: nothing to do
    assert q(conn, "SELECT country_code FROM phone_normalization") == [("86",)]


def _profiles(client, auth, *records):
    return post(client, auth, "/v1/customers", {"customers": list(records)})


@pytest.mark.parametrize("rule", ["phone", "email"])
def test_a_shared_contact_links_two_customers_on_ingest(client, auth, conn, rule):
    value = {"phone": "+86 138 0000 2222"} if rule == "phone" else {"email": "Li@Example.com"}
    other = {"phone": "+8613800002222"} if rule == "phone" else {"email": "li@example.COM"}
    _profiles(client, auth, {"customer_id": "C-old", **value,
                             "identities": [{"channel": "tmall", "external_id": "tb_1"}]})
    post(client, auth, "/v1/orders", {"orders": [order("T-1", cid="C-old"),
                                                 order("J-1", buyer="jd_1", channel="jd")]})
    new = q(conn, "SELECT customer_id FROM orders WHERE order_id = 'J-1'")[0][0]
    _profiles(client, auth, {"channel": "jd", "buyer_id": "jd_1", **other})
    # The jd buyer was merged into the older customer, by the rule.
    assert q(conn, "SELECT merged_into FROM customers WHERE customer_id = %s", new) \
        == [("C-old",)]
    assert count(conn, "SELECT count(*) FROM orders WHERE customer_id = 'C-old'") == 2
    assert q(conn, "SELECT actor, reason FROM customer_merges") == [
        (f"rule:{rule}", f"shared {rule}")]


def test_rules_can_be_switched_off(conn, settings):
    conn.execute("INSERT INTO customers (customer_id, phone, phone_normalized, email,"
                 " email_normalized) VALUES ('A', 'x', '+8613800002222', 'a@x.io', 'a@x.io'),"
                 " ('B', 'x', '+8613800002222', 'b@x.io', 'b@x.io'),"
                 " ('C', NULL, NULL, 'a@x.io', 'a@x.io')")
    conn.commit()
    assert identities.link(conn, replace(settings, link_rules=())).merges == 0
    with conn.transaction():
        only_email = identities.link(conn, replace(settings, link_rules=("email",)))
    assert (only_email.merges, only_email.merged_customers) == (1, 1)
    assert dict(q(conn, "SELECT customer_id, merged_into FROM customers")) == {
        "A": None, "B": None, "C": "A"}
    with conn.transaction():
        both = identities.link(conn, settings)
    assert both.merged_customers == 1
    assert dict(q(conn, "SELECT customer_id, merged_into FROM customers")) == {
        "A": None, "B": "A", "C": "A"}


def test_two_accounts_on_one_channel_are_listed_for_review_not_linked(conn, settings):
    conn.execute("INSERT INTO customers (customer_id, phone, phone_normalized) VALUES"
                 " ('A', 'x', '+8613800002222'), ('B', 'y', '+8613800002222'),"
                 " ('C', 'z', '+8613800002222')")
    conn.execute("INSERT INTO customer_identities VALUES ('tmall', 'tb_a', 'A'),"
                 " ('tmall', 'tb_b', 'B'), ('jd', 'jd_c', 'C')")
    conn.commit()
    with conn.transaction():
        linked = identities.link(conn, settings)
    # A and B each hold a different Tmall account: two people sharing a phone. C links.
    assert (linked.merges, linked.merged_customers, linked.candidates) == (1, 1, 1)
    assert dict(q(conn, "SELECT customer_id, merged_into FROM customers")) == {
        "A": None, "B": None, "C": "A"}
    assert identities.review_list(conn)[0] | {"found_at": None} == {
        "customer_a": "A", "customer_b": "B", "rule": "phone", "channel": "tmall",
        "found_at": None}
    # The operator may allow it.
    with conn.transaction():
        allowed = identities.link(conn, replace(settings, link_same_channel=True))
    assert allowed.merged_customers == 1
    assert q(conn, "SELECT merged_into FROM customers WHERE customer_id = 'B'") == [("A",)]
    assert identities.review_list(conn) == []


def test_identities_resolve_over_the_base_and_an_undone_merge_stays_undone(
        conn, settings, cli_env, capsys):
    from crm_service.cli import main

    conn.execute("INSERT INTO customers (customer_id, email, email_normalized) VALUES"
                 " ('A', 'p@x.io', 'p@x.io'), ('B', 'P@x.io', 'p@x.io')")
    conn.commit()
    with pytest.raises(SystemExit) as done:
        main(["identities", "resolve", "--json"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert '"merges": 1' in out
    identities.unmerge(conn, settings, "A", actor="test")
    with pytest.raises(SystemExit):
        main(["identities", "resolve", "--json"])
    assert '"merges": 0' in capsys.readouterr().out
    assert q(conn, "SELECT merged_into FROM customers WHERE customer_id = 'B'") == [(None,)]


# ---- 3. merge and unmerge -----------------------------------------------------------------

@pytest.fixture()
def two_people(client, auth):
    """C-1 (Tmall) and C-2 (JD, with an email), each with orders."""
    _profiles(client, auth,
              {"customer_id": "C-1", "name": "Li Wei",
               "identities": [{"channel": "tmall", "external_id": "tb_1"}]},
              {"customer_id": "C-2", "email": "li.wei@example.com", "phone": "13900001111",
               "identities": [{"channel": "jd", "external_id": "jd_2"}]})
    post(client, auth, "/v1/orders", {"orders": [
        order("T-1", cid="C-1", at="2024-01-05T10:00:00+08:00"),
        order("T-2", cid="C-1", at="2024-02-05T10:00:00+08:00"),
        order("J-1", cid="C-2", channel="jd", at="2024-03-05T10:00:00+08:00", amount="50"),
        order("J-2", cid="C-2", channel="jd", at="2024-04-05T10:00:00+08:00", amount="70")]})


def test_merge_moves_orders_identities_and_contact_and_unmerge_puts_them_back(
        client, auth, conn, two_people):
    done = post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"],
                                                         "reason": "caller confirmed"})
    assert done["customer_id"] == "C-1" and done["merged_ids"] == ["C-2"]
    assert done["moved"] == {"orders": 2, "identities": 1, "aliases": [],
                             "contact_fields": ["email", "phone"]}
    assert dict(q(conn, "SELECT order_id, customer_id FROM orders")) == {
        "T-1": "C-1", "T-2": "C-1", "J-1": "C-1", "J-2": "C-1"}
    assert q(conn, "SELECT channel, customer_id FROM customer_identities ORDER BY 1") == [
        ("jd", "C-1"), ("tmall", "C-1")]
    assert q(conn, "SELECT email, name FROM customers WHERE customer_id = 'C-1'") == [
        ("li.wei@example.com", "Li Wei")]
    record = q(conn, "SELECT survivor_id, merged_ids, actor, reason FROM customer_merges")
    assert record[0][:2] == ("C-1", ["C-2"]) and record[0][3] == "caller confirmed"
    assert record[0][2].startswith("k_") or record[0][2]  # the API key's id
    # Orders later sent for the alias land on the survivor, and say so.
    late = post(client, auth, "/v1/orders", {"orders": [order("J-3", cid="C-2", channel="jd")]})
    assert (late["results"][0]["customer_id"], late["results"][0]["merged_into"]) == \
        ("C-1", "C-1")
    # Undo: everything the merge moved goes back; the later order stays with the survivor.
    undone = post(client, auth, "/v1/customers/C-1/unmerge", {})
    assert undone["restored"] == {"orders": 2, "identities": 1} and undone["undone_at"]
    assert dict(q(conn, "SELECT order_id, customer_id FROM orders")) == {
        "T-1": "C-1", "T-2": "C-1", "J-1": "C-2", "J-2": "C-2", "J-3": "C-1"}
    assert q(conn, "SELECT email, phone FROM customers WHERE customer_id = 'C-1'") == [
        (None, None)]
    assert q(conn, "SELECT merged_into FROM customers WHERE customer_id = 'C-2'") == [(None,)]
    post(client, auth, "/v1/customers/C-1/unmerge", {}, status=404)  # nothing left to undo


def test_merge_errors_are_problems(client, auth, conn, two_people):
    for body, status in (({"from": []}, 422), ({"from": ["C-1"]}, 422), ({}, 422),
                         ({"from": ["nobody"]}, 404), ({"from": ["C-2"], "extra": 1}, 422)):
        r = client.post("/v1/customers/C-1/merge", json=body, headers=auth)
        assert r.status_code == status, (body, r.get_json())
        assert r.mimetype == "application/problem+json"
    post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    r = client.post("/v1/customers/C-1/merge", json={"from": ["C-2"]}, headers=auth)
    assert r.status_code == 409 and "already merged" in r.get_json()["detail"]
    r = client.post("/v1/customers/C-2/merge", json={"from": ["C-1"]}, headers=auth)
    assert r.status_code == 409  # C-2 is an alias: merge into its survivor
    assert count(conn, "SELECT count(*) FROM customer_merges") == 1


def test_a_merge_cannot_be_undone_while_a_later_one_depends_on_it(client, auth, conn,
                                                                  two_people):
    _profiles(client, auth, {"customer_id": "C-3"})
    first = post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    second = post(client, auth, "/v1/customers/C-3/merge", {"from": ["C-1"]})
    # C-2 now points at C-3 directly (one hop for lookups).
    assert q(conn, "SELECT customer_id FROM customers WHERE merged_into = 'C-3' ORDER BY 1") \
        == [("C-1",), ("C-2",)]
    assert second["moved"]["aliases"] == ["C-2"]
    r = client.post("/v1/customers/C-1/unmerge", json={"merge_id": first["merge_id"]},
                    headers=auth)
    assert r.status_code == 409 and second["merge_id"] in r.get_json()["detail"]
    post(client, auth, "/v1/customers/C-3/unmerge", {"merge_id": second["merge_id"]})
    assert q(conn, "SELECT customer_id, merged_into FROM customers ORDER BY 1") == [
        ("C-1", None), ("C-2", "C-1"), ("C-3", None)]
    post(client, auth, "/v1/customers/C-1/unmerge", {"merge_id": first["merge_id"]})
    assert count(conn, "SELECT count(*) FROM orders WHERE customer_id = 'C-2'") == 2


def test_aliases_resolve_on_every_lookup_surface(client, auth, cdnow_loaded, settings,
                                                 two_people):
    conn = cdnow_loaded
    run_scoring(conn, settings, as_of=date(2024, 4, 30), allow_stale=True)
    conn.commit()
    post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    tier = client.get("/v1/customers/C-2/tier", headers=auth).get_json()
    assert (tier["customer_id"], tier["merged_into"]) == ("C-1", "C-1")
    assert tier["provisional"] is True  # the merged history is not scored yet
    assert client.get("/v1/customers/C-1/tier", headers=auth).get_json()["merged_into"] is None
    profile = client.get("/v1/customers/C-2", headers=auth).get_json()
    assert (profile["customer_id"], profile["merged_into"]) == ("C-1", "C-1")
    assert profile["aliases"] == [{"customer_id": "C-2", "merge_id": profile["aliases"][0][
        "merge_id"]}]
    assert [o["order_id"] for o in profile["recent_orders"]] == ["J-2", "J-1", "T-2", "T-1"]
    found = client.get("/v1/customers/search", query_string={"phone": "139 0000 1111"},
                       headers=auth).get_json()["matches"]
    assert [(m["customer_id"], m["merged_ids"]) for m in found] == [("C-1", ["C-2"])]
    found = client.get("/v1/customers/search", query_string={
        "channel": "jd", "external_id": "jd_2"}, headers=auth).get_json()["matches"]
    assert [m["customer_id"] for m in found] == ["C-1"]
    export = client.get("/v1/customers/C-2/export", headers=auth).get_json()
    assert export["customer_id"] == "C-1" and export["merged_into"] == "C-1"
    assert {o["order_id"] for o in export["orders"]} == {"T-1", "T-2", "J-1", "J-2"}
    assert export["merges"][0]["merged_ids"] == ["C-2"]
    history = client.get("/v1/customers/C-2/merges", headers=auth).get_json()["merges"]
    assert history[0]["customer_id"] == "C-1"
    # Audiences hand tools the survivor only (the alias's row of the live run is left out).
    audience = client.get("/v1/customers", query_string={"limit": 1000}, headers=auth)
    ids = {c["customer_id"] for c in audience.get_json()["items"]}
    assert "C-1" in ids and "C-2" not in ids


def test_merge_event_and_webhook_carry_customer_refs(client, auth, conn, settings, two_people):
    from crm_service.privacy.refs import customer_ref

    done = post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    events = client.get("/v1/events", query_string={"after": "0"},
                        headers=auth).get_json()["events"]
    merged = [e for e in events if e["type"] == "customer.merged"]
    assert len(merged) == 1
    data = merged[0]["data"]
    assert data["customer_ref"] == customer_ref(settings, "C-1")
    assert data["merged_refs"] == [customer_ref(settings, "C-2")]
    assert data["merge_id"] == done["merge_id"]
    assert "C-1" not in str(data) and "C-2" not in str(data)  # refs only, no ids
    r = client.post("/v1/webhooks", headers=auth, json={
        "url": "http://127.0.0.1:9/hook", "events": ["customer.merged", "customer.unmerged"]})
    assert r.status_code == 201, r.get_json()


# ---- 4. scores follow the person ----------------------------------------------------------

def test_the_next_run_scores_the_merged_history(client, auth, cdnow_loaded, settings):
    conn = cdnow_loaded
    as_of = date(1998, 6, 30)
    run_scoring(conn, settings, as_of=as_of)
    conn.commit()
    # Two repeat buyers whose histories do not share a day.
    a, b = (r[0] for r in q(conn, "SELECT customer_id FROM customer_scores WHERE frequency >= 2"
                                  " ORDER BY customer_id LIMIT 2"))
    days = q(conn, "SELECT count(DISTINCT ordered_at::date), min(ordered_at::date),"
                   " max(ordered_at::date), sum(amount) FROM orders WHERE status = 'paid'"
                   " AND customer_id IN (%s, %s)", a, b)[0]
    post(client, auth, f"/v1/customers/{a}/merge", {"from": [b]})
    provisional = client.get(f"/v1/customers/{a}", headers=auth).get_json()
    assert provisional["provisional"] is True
    assert provisional["scores"]["frequency"] == days[0] - 1  # both histories
    run = run_scoring(conn, settings, as_of=as_of)
    conn.commit()
    row = q(conn, "SELECT frequency, recency_days, historic_spend, clv_12m FROM customer_scores"
                  " WHERE run_id = %s AND customer_id = %s", run.run_id, a)[0]
    assert row[0] == days[0] - 1 and row[1] == (days[2] - days[1]).days
    assert float(row[2]) == pytest.approx(float(days[3]))
    assert row[3] > 0
    assert count(conn, "SELECT count(*) FROM customer_scores WHERE run_id = %s"
                       " AND customer_id = %s", run.run_id, b) == 0
    live = client.get(f"/v1/customers/{b}/tier", headers=auth).get_json()
    assert live["provisional"] is False and live["customer_id"] == a
    assert live["merged_into"] == a


# ---- 5. erasure ----------------------------------------------------------------------------

def test_erasing_a_merged_customer_erases_the_person_and_every_alias(client, auth, conn,
                                                                    two_people):
    post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    post(client, auth, "/v1/customers/C-1/unmerge", {})
    post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    r = client.delete("/v1/customers/C-2", headers=auth)  # the alias: erases the person
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["merged_into"] == "C-1" and len(r.get_json()["aliases"]) == 1
    needles = ("C-1", "C-2", "tb_1", "jd_2", "li.wei@example.com", "Li Wei", "13900001111")
    cols = q(conn, "SELECT table_name, column_name FROM information_schema.columns"
                   " WHERE table_schema = 'public' AND data_type IN ('text', 'jsonb', 'json',"
                   " 'ARRAY', 'character varying')")
    left = []
    for table, column in cols:
        for needle in needles:
            n = count(conn, f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s',
                      f"%{needle}%")
            if n:
                left.append((table, column, needle))
    assert left == []
    # Both ids are suppressed from now on.
    body = post(client, auth, "/v1/orders", {"orders": [order("Z-1", cid="C-1"),
                                                        order("Z-2", cid="C-2")]})
    assert [x["outcome"] for x in body["results"]] == ["rejected", "rejected"]


# ---- 6. concurrency ------------------------------------------------------------------------

def test_two_overlapping_merges_at_once_one_wins_nothing_is_lost(dsn, conn, settings,
                                                                 client, auth, two_people):
    _profiles(client, auth, {"customer_id": "C-3"})
    orders_before = count(conn, "SELECT count(*) FROM orders")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def attempt(survivor: str, others: list[str]) -> None:
        with psycopg.connect(dsn) as c:
            barrier.wait()
            try:
                identities.merge(c, settings, survivor, others, actor="test")
                outcomes.append(f"won:{survivor}")
            except ConflictError:
                outcomes.append(f"conflict:{survivor}")

    threads = [threading.Thread(target=attempt, args=("C-1", ["C-2"])),
               threading.Thread(target=attempt, args=("C-3", ["C-2", "C-1"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["conflict", "won"]
    assert count(conn, "SELECT count(*) FROM orders") == orders_before
    assert count(conn, "SELECT count(*) FROM customer_merges") == 1
    survivors = q(conn, "SELECT DISTINCT customer_id FROM orders")
    assert len(survivors) == 1  # every order with the one survivor
    assert count(conn, "SELECT count(*) FROM customers c JOIN customers s"
                       " ON s.customer_id = c.merged_into WHERE s.merged_into IS NOT NULL") == 0


# ---- 7. agents work from an order ----------------------------------------------------------

def test_console_finds_a_customer_by_order_id_and_lists_orders_and_aliases(
        client, auth, conn, make_token, two_people):
    from tests.test_console import search, sign_in

    post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    sign_in(client, make_token("customers:read"))
    for typed in ("J-2", "jd/J-2"):
        r = search(client, typed)
        assert r.status_code == 303 and r.headers["Location"].endswith("/console/customers/C-1")
    page = client.get("/console/customers/C-2").get_data(as_text=True)
    assert "was merged into this customer" in page and 'data-merged-from="C-2"' in page
    assert "J-2" in page and "T-1" in page  # the latest orders
    assert 'class="aliases"><span class="ident">C-2</span>' in page


# ---- review findings: rules take one step at a time, placeholders link nobody -------------

def test_a_rule_never_links_through_a_pair_it_refused(conn, settings):
    """A-B share a phone but hold different Tmall accounts (review); B-C share an email."""
    conn.execute("INSERT INTO customers (customer_id, created_at, phone, phone_normalized, email,"
                 " email_normalized) VALUES"
                 " ('A', now() - interval '3 days', 'p', '+8613800002222', NULL, NULL),"
                 " ('B', now() - interval '2 days', 'p', '+8613800002222', 'b@x.io', 'b@x.io'),"
                 " ('C', now() - interval '1 day', NULL, NULL, 'b@x.io', 'b@x.io')")
    conn.execute("INSERT INTO customer_identities VALUES ('tmall', 'tb_a', 'A'),"
                 " ('tmall', 'tb_b', 'B')")
    conn.commit()
    with conn.transaction():
        linked = identities.link(conn, settings)
    # C is B's (they share an email), not A's through B.
    assert dict(q(conn, "SELECT customer_id, merged_into FROM customers")) == {
        "A": None, "B": None, "C": "B"}
    assert linked.candidates == 1


def test_an_undone_pair_stays_apart_even_through_a_third_customer(conn, settings):
    conn.execute("INSERT INTO customers (customer_id, created_at, email, email_normalized) VALUES"
                 " ('Z', now() - interval '3 days', 'z@x.io', 'z@x.io'),"
                 " ('A', now() - interval '2 days', 'a@x.io', 'a@x.io'),"
                 " ('B', now() - interval '1 day', 'a@x.io', 'a@x.io')")
    conn.commit()
    with conn.transaction():
        identities.link(conn, settings)
    identities.unmerge(conn, settings, "A", actor="test")  # A and B are two people
    # Z now shares an email with each of them: only one of the two may join Z.
    conn.execute("UPDATE customers SET email_normalized = 'z@x.io' WHERE customer_id = 'B'")
    conn.execute("UPDATE customers SET phone = 'p', phone_normalized = '+8613900001111'"
                 " WHERE customer_id IN ('Z', 'A')")
    conn.commit()
    with conn.transaction():
        identities.link(conn, settings)
    merged = dict(q(conn, "SELECT customer_id, merged_into FROM customers"))
    assert merged["Z"] is None
    assert [merged["A"], merged["B"]].count("Z") == 1  # never both


@pytest.mark.parametrize("placeholder", ["000-000-0000", "12345", "+86 0"])
def test_placeholder_phones_link_nobody(conn, settings, placeholder):
    rows = [(f"P{i}", placeholder, normalize_phone(placeholder, "86")) for i in range(3)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO customers (customer_id, phone, phone_normalized)"
                        " VALUES (%s, %s, %s)", rows)
    conn.commit()
    with conn.transaction():
        linked = identities.link(conn, settings)
    assert linked.merges == 0 and linked.candidates == 0


def test_a_value_shared_by_too_many_links_none_and_goes_to_review(conn, settings):
    n = identities.MAX_GROUP + 5
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO customers (customer_id, email, email_normalized)"
                        " VALUES (%s, 'shop@x.io', 'shop@x.io')",
                        [(f"S{i:02d}",) for i in range(n)])
    conn.commit()
    with conn.transaction():
        linked = identities.link(conn, settings)
    assert linked.merges == 0
    assert linked.candidates == identities.MAX_GROUP - 1
    assert {c["channel"] for c in identities.review_list(conn)} == {"*"}


def test_profiles_with_both_ids_are_checked(client, auth, conn):
    _profiles(client, auth, {"customer_id": "C-1",
                             "identities": [{"channel": "jd", "external_id": "jd_1"}]},
              {"customer_id": "C-2"})
    body = _profiles(client, auth, {"customer_id": "C-2", "channel": "jd", "buyer_id": "jd_1"},
                     {"customer_id": "C-2", "channel": "jd", "buyer_id": "jd_2"})
    assert body["results"][0]["outcome"] == "rejected"
    assert body["results"][1]["outcome"] == "updated"
    assert q(conn, "SELECT customer_id FROM customer_identities WHERE external_id = 'jd_2'") \
        == [("C-2",)]


def test_erasure_reaches_merge_records_that_only_moved_their_data(client, auth, conn,
                                                                 two_people):
    _profiles(client, auth, {"customer_id": "D-9", "email": "d9@example.com",
                             "identities": [{"channel": "pdd", "external_id": "pdd_d9"}]})
    post(client, auth, "/v1/orders", {"orders": [order("P-1", cid="D-9", channel="pdd")]})
    first = post(client, auth, "/v1/customers/C-2/merge", {"from": ["D-9"]})
    second = post(client, auth, "/v1/customers/C-1/merge", {"from": ["C-2"]})
    post(client, auth, "/v1/customers/C-1/unmerge", {"merge_id": second["merge_id"]})
    post(client, auth, "/v1/customers/C-2/unmerge", {"merge_id": first["merge_id"]})
    assert client.delete("/v1/customers/D-9", headers=auth).status_code == 200
    for table in ("customer_merges", "customer_merge_orders", "customer_merge_identities"):
        rows = q(conn, f"SELECT * FROM {table}")
        assert not any(needle in str(row) for row in rows
                       for needle in ("D-9", "pdd_d9", "P-1", "d9@example.com")), (table, rows)


def test_an_undone_merge_makes_the_survivor_provisional(client, auth, cdnow_loaded, settings):
    conn = cdnow_loaded
    run_scoring(conn, settings, as_of=date(1998, 6, 30))
    conn.commit()
    a, b = (r[0] for r in q(conn, "SELECT customer_id FROM customer_scores WHERE frequency >= 2"
                                  " ORDER BY customer_id LIMIT 2"))
    post(client, auth, f"/v1/customers/{a}/merge", {"from": [b]})
    run_scoring(conn, settings, as_of=date(1998, 6, 30))  # scores the merged history
    conn.commit()
    assert client.get(f"/v1/customers/{a}/tier", headers=auth).get_json()["provisional"] is False
    post(client, auth, f"/v1/customers/{a}/unmerge", {})
    for who in (a, b):  # both recomputed from what each holds again
        assert client.get(f"/v1/customers/{who}/tier", headers=auth).get_json()["provisional"]


def test_merge_events_pass_webhook_filters():
    from crm_service.triggers.webhooks import FILTERABLE

    assert {"customer.merged", "customer.unmerged", "customer.erased"}.isdisjoint(FILTERABLE)


def test_an_erased_customers_channel_accounts_stay_erased(client, auth, conn, settings,
                                                          tmp_path):
    """Erasing a customer puts their accounts on the suppression list: an order sent later by
    one of them does not bring the person back as a new customer (REST, CSV, profiles)."""
    _profiles(client, auth, {"customer_id": "C-1",
                             "identities": [{"channel": "tmall", "external_id": "tb_gone"}]})
    post(client, auth, "/v1/orders", {"orders": [order("T-1", cid="C-1")]})
    assert client.delete("/v1/customers/C-1", headers=auth).status_code == 200
    body = post(client, auth, "/v1/orders", {"orders": [order("T-2", buyer="tb_gone"),
                                                        order("T-3", buyer="tb_other")]})
    assert body["results"][0]["outcome"] == "rejected"
    assert "erased" in body["results"][0]["errors"]["buyer_id"]
    assert body["results"][1]["outcome"] == "inserted"
    profile = _profiles(client, auth, {"channel": "tmall", "buyer_id": "tb_gone",
                                       "email": "back@example.com"})
    assert profile["results"][0]["outcome"] == "rejected"
    path = write(tmp_path / "o.csv", "order_id,channel,buyer_id,ordered_at,amount\n"
                 "T-4,tmall,tb_gone,2024-03-01,10\n")
    assert import_orders(conn, settings, path).rejected == 1
    profiles = write(tmp_path / "c.csv", "channel,buyer_id,email\ntmall,tb_gone,b@example.com\n")
    assert import_customers(conn, settings, profiles).rejected == 1
    assert count(conn, "SELECT count(*) FROM customer_identities WHERE external_id = 'tb_gone'") \
        == 0
    assert count(conn, "SELECT count(*) FROM customers WHERE email IS NOT NULL") == 0


def test_migration_0021_upgrades_a_base_with_data_and_rolls_back(server_dsn, settings):
    """A base as the previous release left it (identities, phones in the old form), upgraded,
    its phones rewritten in E.164, then rolled back and upgraded again."""
    from yoyo import get_backend

    from crm_service.platform import schema
    from tests.test_schema import _fresh_db

    url = _fresh_db(server_dsn, "crm_mig_identities")
    backend = get_backend(schema._yoyo_uri(url))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(
            schema._migrations().filter(lambda m: m.id != "0021.identities")))
    backend.connection.close()
    with psycopg.connect(url) as c:
        c.execute("INSERT INTO customers (customer_id, phone, phone_normalized) VALUES"
                  " ('A', '138 0000 2222', '13800002222'), ('B', NULL, NULL)")
        c.execute("INSERT INTO customer_identities VALUES ('tmall', 'tb_a', 'A')")
    assert schema.upgrade(url) == ["0021.identities"]
    with psycopg.connect(url) as c:
        assert identities.ensure_phone_scheme(c, replace(settings, phone_country_code="86")) == 1
        assert q(c, "SELECT phone_normalized FROM customers WHERE customer_id = 'A'") == [
            ("+8613800002222",)]
        assert q(c, "SELECT customer_id FROM customer_identities") == [("A",)]
        assert q(c, "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conname = 'customer_identities_pkey'") == [
            ("PRIMARY KEY (external_id, channel)",)]
        c.execute("UPDATE customers SET merged_into = 'A', merge_id = 1 WHERE customer_id = 'B'")
        c.execute("INSERT INTO events (type, customer_id, data) VALUES"
                  " ('customer.merged', 'A', '{}')")
        c.commit()
    backend = get_backend(schema._yoyo_uri(url))
    with backend.lock():
        backend.rollback_migrations(backend.to_rollback(
            schema._migrations().filter(lambda m: m.id == "0021.identities")))
    backend.connection.close()
    with psycopg.connect(url) as c:
        assert count(c, "SELECT count(*) FROM customers") == 2  # the alias stays a customer
        assert count(c, "SELECT count(*) FROM events") == 0
        assert q(c, "SELECT customer_id FROM customer_identities") == [("A",)]
        assert count(c, "SELECT count(*) FROM information_schema.columns"
                        " WHERE table_name = 'customers' AND column_name = 'merged_into'") == 0
        assert count(c, "SELECT count(*) FROM pg_indexes"
                        " WHERE indexname = 'customer_identities_external_idx'") == 1
    assert schema.upgrade(url) == ["0021.identities"]
