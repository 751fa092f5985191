"""Hypothesis state machine over REST ingestion: ingest, replay, conflicting replay, refund, erase.

Every step goes through the app against the real database; after each step the stored orders must
equal a model in which the last record sent for a business key (channel, order_id) wins, erased
customers hold nothing and accept nothing, and a replayed Idempotency-Key changes nothing.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import q

# Ids chosen so none is a substring of another (erasure matches stored responses by JSON text).
CUSTOMERS = ["hc-a", "hc-b", "hc-c", "hc-d"]
ORDER_IDS = [f"o-{i}" for i in range(6)]
CHANNELS = ["tmall", "jd"]
AMOUNTS = ["10.00", "25.50", "99.99", "0.00", "1234.56"]
STATUSES = ["paid", "refunded", "cancelled"]
DAYS = ["2025-01-05", "2025-02-10", "2025-03-15"]

records = st.fixed_dictionaries({
    "order_id": st.sampled_from(ORDER_IDS),
    "customer_id": st.sampled_from(CUSTOMERS),
    "channel": st.sampled_from(CHANNELS),
    "ordered_at": st.sampled_from(DAYS),
    "amount": st.sampled_from(AMOUNTS),
    "status": st.sampled_from(STATUSES),
})
batches = st.lists(records, min_size=1, max_size=5)


def make_machine(client, auth, conn):
    class Ingestion(RuleBasedStateMachine):
        keys = Bundle("idempotency_keys")

        def __init__(self) -> None:
            super().__init__()
            conn.execute("TRUNCATE idempotency_records, customer_identities, orders, customers,"
                         " erased_customers, events CASCADE")  # not api_keys: auth stays
            conn.commit()
            # (channel, order_id) -> (customer_id, day, amount, status)
            self.orders: dict[tuple[str, str], tuple[str, str, str, str]] = {}
            self.erased: set[str] = set()
            # key -> (body, status, response bytes)
            self.sent: dict[str, tuple[dict, int, bytes]] = {}

        def post(self, body: dict, key: str | None = None):
            headers = dict(auth)
            if key:
                headers["Idempotency-Key"] = key
            return client.post("/v1/orders", json=body, headers=headers)

        def apply(self, batch: list[dict], response) -> None:
            assert response.status_code == 200, response.get_data(as_text=True)
            result = response.json
            assert len(result["results"]) == len(batch)
            totals = result["totals"]
            assert sum(totals.values()) == len(batch)  # every record has exactly one outcome
            new_keys = set()
            for record, outcome in zip(batch, result["results"], strict=True):
                biz = (record["channel"], record["order_id"])
                if record["customer_id"] in self.erased:
                    assert outcome["outcome"] == "rejected", outcome
                    continue
                assert outcome["outcome"] in {"inserted", "updated", "duplicate"}, outcome
                if biz not in self.orders:
                    new_keys.add(biz)
                self.orders[biz] = (record["customer_id"], record["ordered_at"],
                                    record["amount"], record["status"])
            assert totals["inserted"] == len(new_keys)
            assert totals["rejected"] == sum(r["customer_id"] in self.erased for r in batch)

        @rule(target=keys, batch=batches, with_key=st.booleans())
        def ingest(self, batch, with_key):
            key = f"k-{uuid.uuid4().hex}" if with_key else None
            body = {"orders": batch}
            response = self.post(body, key)
            self.apply(batch, response)
            if key:
                self.sent[key] = (body, response.status_code, response.get_data())
            return key or "no-key"

        @rule(key=keys)
        def replay(self, key):
            if key not in self.sent:
                return
            body, status, stored = self.sent[key]
            response = self.post(body, key)
            assert response.status_code == status
            assert response.get_data() == stored
            assert response.headers.get("Idempotent-Replayed") == "true"

        @rule(key=keys, batch=batches)
        def conflicting_replay(self, key, batch):
            if key not in self.sent or {"orders": batch} == self.sent[key][0]:
                return
            response = self.post({"orders": batch}, key)
            assert response.status_code == 422
            assert response.mimetype == "application/problem+json"

        @rule(data=st.data())
        def refund(self, data):
            if not self.orders:
                return
            biz = data.draw(st.sampled_from(sorted(self.orders)))
            customer, day, amount, _ = self.orders[biz]
            if customer in self.erased:
                return
            record = {"order_id": biz[1], "customer_id": customer, "channel": biz[0],
                      "ordered_at": day, "amount": amount, "status": "refunded"}
            self.apply([record], self.post({"orders": [record]}))

        @rule(key=consumes(keys), customer=st.sampled_from(CUSTOMERS))
        def erase(self, key, customer):
            response = client.delete(f"/v1/customers/{customer}", headers=auth)
            held = any(c == customer for c, *_ in self.orders.values())
            if customer in self.erased or not held:
                # Nothing held (never sent, or erased before): 404, and nothing changes.
                assert response.status_code in {200, 404}, response.get_data(as_text=True)
            else:
                assert response.status_code == 200, response.get_data(as_text=True)
            if response.status_code == 200:
                self.erased.add(customer)
                self.orders = {k: v for k, v in self.orders.items() if v[0] != customer}
                needle = json.dumps(customer).encode()
                self.sent = {k: v for k, v in self.sent.items() if needle not in v[2]}

        @invariant()
        def stored_orders_match_the_model(self):
            rows = q(conn, "SELECT channel, order_id, customer_id, ordered_at::date::text,"
                           " amount, status FROM orders")
            stored = {(r[0], r[1]): (r[2], r[3], f"{r[4]:.2f}", r[5]) for r in rows}
            assert stored == self.orders
            # One row per business key, and totals per customer as sent.
            assert len(rows) == len({(r[0], r[1]) for r in rows})
            paid: dict[str, Decimal] = {}
            for customer, _, amount, status in self.orders.values():
                if status == "paid":
                    paid[customer] = paid.get(customer, Decimal(0)) + Decimal(amount)
            db_paid = {r[0]: r[1] for r in q(conn, "SELECT customer_id, sum(amount) FROM orders"
                                                   " WHERE status = 'paid' GROUP BY 1")}
            assert db_paid == paid

        @invariant()
        def erased_customers_hold_nothing(self):
            if self.erased:
                assert q(conn, "SELECT count(*) FROM customers WHERE customer_id = ANY(%s)",
                         sorted(self.erased))[0][0] == 0

    return Ingestion


def test_ingestion_state_machine(client, auth, conn):
    machine = make_machine(client, auth, conn)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=50, stateful_step_count=20, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
