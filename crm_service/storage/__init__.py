"""Storage: the SQL of every aggregate, and nothing else holds SQL (tests/test_layering.py).

Orders (``orders``, staged merges in ``staging``, the writers' ``locks``), customers and
identities (``customers``), scoring runs (``runs``: queue, ownership, progress; ``summary``: a
run's inputs; ``run_session``: the local engine's reads and writes; ``publishing``,
``score_reads``, ``scores``, ``retention``; ``policies``: tier-policy versions), Idempotency-Key
records (``idempotency``) and the operational tables' retention (``housekeeping``).

Transactions: a storage function runs its statements on the connection it is given and never
commits; the caller's ``with pool.connection()`` block (or ``conn.transaction()``) is the unit
of work. The documented exceptions are long-running jobs that commit as they go: a scoring run
(``crm_service.scoring.run``), a bulk import, the retention passes and webhook delivery.
May import ``crm_service.platform``, plain record types and ``models``; never a service module
or ``api``.
"""
