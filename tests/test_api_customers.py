"""POST /v1/customers: profile upserts and channel identities."""

from tests.conftest import count


def post(client, auth, customers, **headers):
    return client.post("/v1/customers", json={"customers": customers},
                       headers={**auth, **headers})


def test_upsert_normalises_for_lookup(client, auth, conn):
    r = post(client, auth, [{"customer_id": "C1", "email": " Li.Wei@Example.COM",
                             "phone": "+86 138-0013-8000", "name": "Li Wei"}])
    assert r.status_code == 200 and r.json["results"][0]["outcome"] == "inserted"
    row = conn.execute("SELECT email, email_normalized, phone_normalized, name FROM customers"
                       ).fetchone()
    assert row == ("Li.Wei@Example.COM", "li.wei@example.com", "+8613800138000", "Li Wei")


def test_absent_fields_unchanged_null_clears_identical_is_duplicate(client, auth, conn):
    post(client, auth, [{"customer_id": "C1", "email": "a@b.co", "name": "A"}])
    r = post(client, auth, [{"customer_id": "C1", "name": "B"}])
    assert r.json["results"][0]["outcome"] == "updated"
    assert conn.execute("SELECT email, name FROM customers").fetchone() == ("a@b.co", "B")
    r = post(client, auth, [{"customer_id": "C1", "name": "B"}])
    assert r.json["results"][0]["outcome"] == "duplicate"
    post(client, auth, [{"customer_id": "C1", "email": None}])
    assert conn.execute("SELECT email, email_normalized FROM customers").fetchone() == (None, None)


def test_identities_link_and_conflicts_are_rejected(client, auth, conn):
    r = post(client, auth, [
        {"customer_id": "C1", "identities": [{"channel": "JD", "external_id": "jd_1"}]},
        {"customer_id": "C2", "identities": [{"channel": "jd", "external_id": "jd_1"}]},
    ])
    assert [x["outcome"] for x in r.json["results"]] == ["inserted", "rejected"]
    assert "already belongs to another customer" in r.json["results"][1]["errors"][
        "identities.0"]
    assert conn.execute("SELECT channel, external_id, customer_id FROM customer_identities"
                        ).fetchall() == [("jd", "jd_1", "C1")]
    # Same link again: nothing new.
    r = post(client, auth, [{"customer_id": "C1",
                             "identities": [{"channel": "jd", "external_id": "jd_1"}]}])
    assert r.json["results"][0]["outcome"] == "duplicate"


def test_bad_profiles_rejected_per_record(client, auth, conn):
    r = post(client, auth, [{"customer_id": "C1", "email": "nope"},
                            {"customer_id": "C2", "phone": "12"},
                            {"customer_id": "C3"}])
    assert [x["outcome"] for x in r.json["results"]] == ["rejected", "rejected", "inserted"]
    assert count(conn, "SELECT count(*) FROM customers") == 1


def test_unknown_fields_and_scope(client, make_token, auth, conn):
    r = post(client, auth, [{"customer_id": "C1", "age": 3}])
    assert r.status_code == 422
    read_only = {"Authorization": f"Bearer {make_token('customers:read')}"}
    assert post(client, read_only, [{"customer_id": "C1"}]).status_code == 403
    assert count(conn, "SELECT count(*) FROM customers") == 0


def test_customer_batch_limit(client, auth):
    r = post(client, auth, [{"customer_id": f"C{i}"} for i in range(1001)])
    assert r.status_code == 413


def test_unknown_fields_in_identities_are_422(client, auth, conn):
    r = post(client, auth, [{"customer_id": "C1", "identities": [
        {"channel": "jd", "external_id": "e1", "extra": 1}]}])
    assert r.status_code == 422 and "customers.0" in r.json["errors"]
    assert count(conn, "SELECT count(*) FROM customers") == 0


def test_unstorable_text_is_rejected_per_record(client, auth, conn):
    import json

    body = json.dumps({"customers": [{"customer_id": "C1", "email": "a\u0000b@x.com"},
                                     {"customer_id": "C2", "name": "\ud800"},
                                     {"customer_id": "C3", "phone": "١٢٣٤٥٦٧"},
                                     {"customer_id": "C4", "name": "李伟"}]})
    r = client.post("/v1/customers", data=body,
                    headers={**auth, "Content-Type": "application/json"})
    assert [x["outcome"] for x in r.json["results"]] == ["rejected"] * 3 + ["inserted"]


def test_a_concurrent_change_to_another_field_is_not_undone(client, auth, conn, dsn):
    """The upsert keeps the *current* value of fields the request does not name."""
    import threading

    import psycopg

    post(client, auth, [{"customer_id": "LU1", "email": "old@x.com"}])
    other = psycopg.connect(dsn)
    other.execute("UPDATE customers SET email = 'new@x.com' WHERE customer_id = 'LU1'")
    result = {}
    t = threading.Thread(target=lambda: result.setdefault(
        "r", post(client, auth, [{"customer_id": "LU1", "phone": "+8613800138000"}])))
    t.start()
    t.join(0.5)  # the request now waits for the row lock held by `other`
    other.commit()
    other.close()
    t.join(10)
    assert result["r"].json["results"][0]["outcome"] == "updated"
    assert conn.execute("SELECT email, phone_normalized FROM customers").fetchone() == (
        "new@x.com", "+8613800138000")


def test_same_customer_twice_collapses_and_resend_is_unchanged(client, auth, conn):
    batch = [{"customer_id": "C1", "email": "a@x.co"}, {"customer_id": "C1", "name": "A"}]
    r = post(client, auth, batch)
    assert [x["outcome"] for x in r.json["results"]] == ["inserted", "duplicate"]
    assert conn.execute("SELECT email, name FROM customers").fetchone() == ("a@x.co", "A")
    conn.commit()
    r = post(client, auth, batch)
    assert [x["outcome"] for x in r.json["results"]] == ["duplicate", "duplicate"]


def test_ids_that_cannot_be_url_path_segments_are_rejected(client, auth, conn):
    """A customer called "search" or holding "/" could never be looked up, exported or erased."""
    r = post(client, auth, [{"customer_id": "search"}, {"customer_id": "a/b"},
                            {"customer_id": "searching"}])
    assert [x["outcome"] for x in r.json["results"]] == ["rejected", "rejected", "inserted"]
    r = client.post("/v1/orders", headers=auth, json={"orders": [
        {"order_id": "X1", "customer_id": "a/b", "channel": "web", "ordered_at": "2024-01-01",
         "amount": 5}]})
    assert r.json["results"][0]["errors"]["customer_id"].startswith("must not contain '/'")
    assert count(conn, "SELECT count(*) FROM customers") == 1
    # /v1/customers/search is only the search: DELETE there is 405, never an erasure.
    r = client.delete("/v1/customers/search", headers=auth)
    assert r.status_code == 405 and r.mimetype == "application/problem+json"
    assert client.get("/v1/customers/searching", headers=auth).status_code == 200


def test_non_ascii_digits_are_not_ids(client, auth):
    """'³' and '٣' pass str.isdigit(); they must be a 4xx, not a crash in int()."""
    for bad in ["³", "٣"]:
        r = client.get(f"/v1/webhooks/{bad}", headers=auth)
        assert r.status_code in {404, 422}, r.get_data(as_text=True)
        r = client.get(f"/v1/events?after={bad}", headers=auth)
        assert r.status_code == 422
