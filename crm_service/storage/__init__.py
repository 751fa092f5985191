"""Storage: the SQL of every aggregate.

Outside it only the platform's connection, migration and embedded-server modules talk to
PostgreSQL (``tests/test_layering.py`` enforces it).

Orders (``orders``, staged merges in ``staging``, the writers' ``locks``); customers and
identities (``customers``, ``lookups``); audiences (``audiences``); scoring runs (``runs``:
queue, ownership, progress; ``summary``: a run's inputs; ``run_session``: the local engine's
reads and writes; ``publishing``, ``score_reads``, ``scores``, ``retention``; ``policies``:
tier-policy versions); events (``events``); webhooks (``webhooks``); erasure (``erasure``); API
keys (``keys``); console sessions (``sessions``); Idempotency-Key records (``idempotency``);
schedule slots (``schedule_slots``); the metrics' database gauges (``gauges``); the operational
tables' retention (``housekeeping``).

Records: rows come back as frozen dataclasses (``class_row``) where a caller reads fields by
name; audience and score-row streams stay tuples, written straight to CSV or COPY.

Transactions: a storage function runs its statements on the connection it is given and does
not commit; the caller's ``with pool.connection()`` block (or ``conn.transaction()``) is the
unit of work. The exceptions, long-running work that commits as it goes, say so in their
docstrings: the local engine's session (``run_session``) and run ownership (``runs``),
``retention`` and ``housekeeping`` passes. May import ``crm_service.platform``,
``crm_service.errors``, ``crm_service.vocabulary``, ``models`` and the plain record types and
pure helpers of the capabilities it stores (``customers.rules.Profile``, ``scoring.inputs`` and
``scoring.occasions``, ``scoring.churn.wanted``, ``privacy.refs``); never a service's
workflow, and never ``api``.
"""
