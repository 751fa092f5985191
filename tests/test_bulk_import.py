"""crm-service import orders/customers, through the CLI, against the real database."""

import json

import pytest
from click.testing import CliRunner

from crm_service.cli import main
from tests.conftest import count, write

HEADER = "order_id,customer_id,ordered_at,amount,channel,status\n"


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_import_counts_and_second_import_changes_nothing(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", HEADER + "O1,C1,2024-01-05,10.00,tmall,paid\n"
              "O2,C1,2024-02-05T10:00:00+08:00,20.50,jd,\nO3,C2,2024-03-01,5,web,cancelled\n")
    r = run("import", "orders", str(f), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"inserted": 3, "updated": 0, "duplicates": 0,
                                    "rejected": 0, "rows": 3, "report": None}
    before = conn.execute("SELECT * FROM orders ORDER BY 1, 2").fetchall()
    conn.commit()
    r = run("import", "orders", str(f), "--json")
    assert json.loads(r.stdout)["duplicates"] == 3
    assert json.loads(r.stdout)["inserted"] == 0
    assert conn.execute("SELECT * FROM orders ORDER BY 1, 2").fetchall() == before


def test_rejects_go_to_report_with_line_numbers(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", HEADER
              + "O1,C1,2024-01-05,10.00,tmall,paid\n"
              + "O2,C1,not-a-date,1,tmall,paid\n"
              + "O3,C1,2024-01-05,-3,tmall,paid\n"
              + "O4,C1,2024-01-05\n"
              + "O5,C1,2024-01-05,1.00,tmall,shipped\n"
              + "O6,C1,2024-01-05,1.00,tmall,paid\n")
    r = run("import", "orders", str(f), "--json")
    out = json.loads(r.stdout)
    assert (out["inserted"], out["rejected"], out["rows"]) == (2, 4, 6)
    report = (tmp_path / "o.csv.rejects.csv").read_text().splitlines()
    assert report[0] == "line,order_id,field,reason"
    lines = {int(x.split(",")[0]) for x in report[1:]}
    assert lines == {3, 4, 5, 6}
    assert "4,O3,amount,must be >= 0" in report
    assert '5,O4,_row,"expected 6 fields, found 3"' in report
    assert count(conn, "SELECT count(*) FROM orders") == 2


def test_refund_in_same_file_and_later_file(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", HEADER + "O1,C1,2024-01-05,10.00,tmall,paid\n"
              "O1,C1,2024-01-05,10.00,tmall,refunded\n")
    out = json.loads(run("import", "orders", str(f), "--json").stdout)
    assert (out["inserted"], out["updated"]) == (1, 1)
    again = json.loads(run("import", "orders", str(f), "--json").stdout)
    assert (again["inserted"], again["updated"], again["duplicates"]) == (0, 0, 2)
    g = write(tmp_path / "p.csv", HEADER + "O1,C1,2024-01-05,4.00,tmall,refunded\n")
    out = json.loads(run("import", "orders", str(g), "--json").stdout)
    assert out["updated"] == 1
    assert conn.execute("SELECT status, amount::text FROM orders").fetchone() == (
        "refunded", "4.00")


def test_channel_option_and_missing_channel(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", "order_id,customer_id,ordered_at,amount\nO1,C1,2024-01-05,1\n")
    r = run("import", "orders", str(f))
    assert r.exit_code == 1 and "pass --channel" in r.output
    r = run("import", "orders", str(f), "--channel", "JD", "--json")
    assert json.loads(r.stdout)["inserted"] == 1
    assert conn.execute("SELECT channel FROM orders").fetchone()[0] == "jd"


@pytest.mark.parametrize(("content", "message"), [
    ("a,b\n1,2\n", "missing column(s): order_id, ordered_at, amount, customer_id (or buyer_id"),
    ("order_id,customer_id,ordered_at,amount,channel,colour\n", "unknown column(s): colour"),
    ("order_id,order_id,customer_id,ordered_at,amount,channel\n", "repeated column(s)"),
    ("", "is empty"),
])
def test_wrong_header_fails_clearly(tmp_path, conn, cli_env, content, message):
    f = write(tmp_path / "o.csv", content)
    r = run("import", "orders", str(f))
    assert r.exit_code == 1 and message in r.output


def test_unreadable_and_non_utf8_files_fail_and_write_nothing(tmp_path, conn, cli_env):
    r = run("import", "orders", str(tmp_path / "missing.csv"))
    assert r.exit_code == 1 and "cannot read" in r.output
    f = tmp_path / "latin1.csv"
    f.write_bytes(HEADER.encode() + b"O1,C1,2024-01-05,1,tmall,paid\n"
                  + b"O2,C\xe9,2024-01-05,1,tmall,paid\n")
    r = run("import", "orders", str(f))
    assert r.exit_code == 1 and "not UTF-8" in r.output
    assert count(conn, "SELECT count(*) FROM orders") == 0  # the good first row too


def test_header_is_case_insensitive_and_bom_tolerated(tmp_path, conn, cli_env):
    f = tmp_path / "o.csv"
    f.write_bytes("\ufeffOrder_ID,Customer_ID,Ordered_At,Amount,Channel\nO1,C1,2024-01-05,1,web\n"
                  .encode())
    assert json.loads(run("import", "orders", str(f), "--json").stdout)["inserted"] == 1


def test_import_agrees_with_rest_on_the_same_records(tmp_path, conn, cli_env, client, auth):
    """The same bad records are rejected for the same reasons by both entry points."""
    bad = [("O1", "C1", "2999-01-01", "1"), ("O2", "C1", "2024-01-01", "1.001"),
           ("O3", "", "2024-01-01", "1"), ("O4", "C1", "1980-01-01", "1")]
    f = write(tmp_path / "o.csv", "order_id,customer_id,ordered_at,amount,channel\n"
              + "".join(f"{a},{b},{c},{d},web\n" for a, b, c, d in bad))
    run("import", "orders", str(f))
    csv_reasons = [tuple(x.split(",", 3)[2:]) for x in
                   (tmp_path / "o.csv.rejects.csv").read_text().splitlines()[1:]]
    r = client.post("/v1/orders", headers=auth, json={"orders": [
        {"order_id": a, "customer_id": b, "ordered_at": c, "amount": d, "channel": "web"}
        for a, b, c, d in bad]})
    rest_reasons = [item for x in r.json["results"] for item in x["errors"].items()]
    assert csv_reasons == rest_reasons


def test_import_customers(tmp_path, conn, cli_env):
    f = write(tmp_path / "c.csv", "customer_id,email,phone,name\n"
              "C1,Li@Example.com,+86 138 0013 8000,Li\nC2,bad-email,,\nC3,,,\n")
    out = json.loads(run("import", "customers", str(f), "--json").stdout)
    assert (out["inserted"], out["rejected"]) == (2, 1)
    assert conn.execute("SELECT email_normalized FROM customers WHERE customer_id='C1'"
                        ).fetchone()[0] == "li@example.com"
    out = json.loads(run("import", "customers", str(f), "--json").stdout)
    assert out["duplicates"] == 2
    g = write(tmp_path / "d.csv", "customer_id,name\nC1,\n")  # empty cell: unchanged
    run("import", "customers", str(g))
    assert conn.execute("SELECT name FROM customers WHERE customer_id='C1'").fetchone()[0] == "Li"


def test_import_large_file_streams(tmp_path, conn, cli_env):
    lines = [HEADER] + [f"O{i},C{i % 500},2024-01-{i % 28 + 1:02d},{i % 100}.5,web,paid\n"
                        for i in range(30_000)]
    f = write(tmp_path / "big.csv", "".join(lines))
    from crm_service.ingestion import bulk as bulk_import
    from crm_service.platform.config import load_settings

    summary = bulk_import.import_orders(conn, load_settings(cli_env), f, chunk_rows=1000)
    conn.commit()
    assert summary.inserted == 30_000
    assert count(conn, "SELECT count(DISTINCT customer_id) FROM orders") == 500


def test_repeats_across_and_within_chunks_keep_file_order(tmp_path, conn, cli_env):
    """Small chunks force the careful merge path: every repeat must apply in file order."""
    from crm_service.ingestion import bulk as bulk_import
    from crm_service.platform.config import load_settings

    rows = ["O1,C1,2024-01-05,10.00,tmall,paid", "O2,C2,2024-01-05,5.00,tmall,paid",
            "O1,C1,2024-01-05,10.00,tmall,refunded", "O3,C3,2024-01-06,1.00,jd,paid",
            "O1,C1,2024-01-05,4.00,tmall,refunded", "O1,C1,2024-01-05,4.00,tmall,refunded",
            "O2,C2,2024-01-05,5.00,tmall,cancelled"]
    f = write(tmp_path / "o.csv", HEADER + "\n".join(rows) + "\n")
    s = bulk_import.import_orders(conn, load_settings(cli_env), f, chunk_rows=3)
    conn.commit()
    # O1 was stored by the first chunk, so its later records count as one update (the last).
    assert (s.inserted, s.updated, s.duplicates) == (3, 2, 2)
    again = bulk_import.import_orders(conn, load_settings(cli_env), f, chunk_rows=3)
    conn.commit()
    assert (again.inserted, again.updated, again.duplicates) == (0, 0, 7)
    got = conn.execute("SELECT order_id, status, amount::text FROM orders ORDER BY 1").fetchall()
    assert got == [("O1", "refunded", "4.00"), ("O2", "cancelled", "5.00"),
                   ("O3", "paid", "1.00")]


def test_unstorable_values_go_to_the_report_not_a_crash(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", HEADER + "B1,C1,2024-05-01,١٢٣,web,paid\n"
              "B2,C1,2024-05-01T10:00:00+20:00,5,web,paid\nB3,C1,2024-05-01,5,web,paid\n")
    out = json.loads(run("import", "orders", str(f), "--json").stdout)
    assert (out["inserted"], out["rejected"]) == (1, 2)


def test_failed_import_leaves_no_report_and_a_clean_run_removes_a_stale_one(tmp_path, conn,
                                                                            cli_env):
    f = tmp_path / "o.csv"
    f.write_bytes(HEADER.encode() + b"O1,C1,2024-01-05,-1,tmall,paid\n"
                  + b"O2,C1,2024-01-05,1,tmall,paid\n" * 3 + b"O3,C\xe9,2024-01-05,1,web,paid\n")
    r = run("import", "orders", str(f))
    assert r.exit_code == 1 and "line 6 has an invalid byte" in r.output
    assert not (tmp_path / "o.csv.rejects.csv").exists()
    assert not list(tmp_path.glob("*.partial"))
    stale = write(tmp_path / "p.csv.rejects.csv", "old report\n")
    g = write(tmp_path / "p.csv", HEADER + "O1,C1,2024-01-05,1,tmall,paid\n")
    assert run("import", "orders", str(g)).exit_code == 0
    assert not stale.exists()


def test_multiline_record_is_reported_at_its_first_line(tmp_path, conn, cli_env):
    f = write(tmp_path / "o.csv", HEADER + 'O1,"C\n1",2024-01-05,1,tmall,paid\n'
              "O2,C2,2024-01-05,-1,tmall,paid\n")
    out = json.loads(run("import", "orders", str(f), "--json").stdout)
    assert out["rejected"] == 2
    lines = [x.split(",")[0] for x in (tmp_path / "o.csv.rejects.csv").read_text().splitlines()]
    assert lines[1:] == ["2", "4"]


def _orders_of(conn):
    return conn.execute("SELECT channel, order_id, customer_id, ordered_at, amount, currency,"
                        " status FROM orders ORDER BY 1, 2").fetchall()


def _history(customers: int, *, refunds: bool) -> list[tuple[str, str]]:
    """(ordered_at, CSV line) for a few orders per customer over a year, some refunded later."""
    records = []
    for c in range(customers):
        for k in range(1 + c % 4):
            day = f"2024-{(c * 7 + k * 97) % 12 + 1:02d}-{(c + k * 11) % 28 + 1:02d}"
            channel = ("tmall", "jd", "web")[(c + k) % 3]
            records.append((day, f"O{c}-{k},C{c},{day},{c % 50}.{k}0,{channel},paid\n"))
            if refunds and (c + k) % 5 == 0:  # the same order again, refunded at year end
                records.append(("2024-12-31",
                                f"O{c}-{k},C{c},{day},{c % 50}.{k}0,{channel},refunded\n"))
    return records


@pytest.mark.parametrize("refunds", [False, True])
def test_time_ordered_file_imports_like_the_customer_grouped_one(tmp_path, conn, cli_env,
                                                                  refunds):
    """A marketplace export is ordered by time: each customer's orders spread over the file,
    across parse chunks. It must land exactly as the same orders grouped by customer do."""
    from crm_service.ingestion import bulk as bulk_import
    from crm_service.platform.config import load_settings

    records = _history(300, refunds=refunds)
    grouped = write(tmp_path / "grouped.csv", HEADER + "".join(line for _, line in records))
    by_time = write(tmp_path / "time.csv", HEADER + "".join(
        line for _, line in sorted(records, key=lambda r: r[0])))  # stable: refund after paid
    settings = load_settings(cli_env)
    results = []
    for f in (grouped, by_time):
        conn.execute("TRUNCATE orders, customers CASCADE")
        conn.commit()
        s = bulk_import.import_orders(conn, settings, f, chunk_rows=40)
        conn.commit()
        results.append((s.rows, s.inserted + s.updated + s.duplicates, _orders_of(conn),
                        count(conn, "SELECT count(*) FROM customers")))
        if not refunds:  # without repeats the counts cannot depend on where chunks end
            assert (s.inserted, s.updated, s.duplicates) == (len(records), 0, 0)
        # The other file holds the same orders: importing it on top changes nothing.
        other = by_time if f is grouped else grouped
        again = bulk_import.import_orders(conn, settings, other, chunk_rows=40)
        conn.commit()
        assert (again.inserted, again.updated) == (0, 0)
        assert _orders_of(conn) == results[-1][2]
    assert results[0] == results[1]
    assert results[0][3] == 300
    refunded = sum(1 for row in results[0][2] if row[6] == "refunded")
    assert refunded == (sum(1 for _, line in records if line.endswith("refunded\n"))
                        if refunds else 0)


def test_time_ordered_file_into_a_live_base(tmp_path, conn, cli_env):
    """An incremental, time-ordered import on top of existing orders and customers."""
    from crm_service.ingestion import bulk as bulk_import
    from crm_service.platform.config import load_settings

    records = sorted(_history(200, refunds=False), key=lambda r: r[0])
    half = len(records) // 2
    first = write(tmp_path / "first.csv", HEADER + "".join(line for _, line in records[:half]))
    rest = write(tmp_path / "rest.csv", HEADER + "".join(line for _, line in records[half:]))
    whole = write(tmp_path / "whole.csv", HEADER + "".join(line for _, line in records))
    settings = load_settings(cli_env)
    bulk_import.import_orders(conn, settings, first, chunk_rows=30)
    conn.commit()
    s = bulk_import.import_orders(conn, settings, rest, chunk_rows=30)
    conn.commit()
    assert (s.inserted, s.updated, s.duplicates) == (len(records) - half, 0, 0)
    assert count(conn, "SELECT count(*) FROM customers") == 200
    incremental = _orders_of(conn)
    conn.execute("TRUNCATE orders, customers CASCADE")
    conn.commit()
    bulk_import.import_orders(conn, settings, whole, chunk_rows=30)
    conn.commit()
    assert _orders_of(conn) == incremental
    assert count(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders'") == 3
