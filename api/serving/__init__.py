"""The serving lane: gunicorn worker classes and the fast path for one-customer lookups.

``server`` (worker classes whose own error answers are problem+json), ``fastpath`` (the
batched lane for ``/tier`` and the profile), ``gunicorn_hooks`` (gunicorn settings module).
May import ``crm_service``; nothing in ``api`` imports it but the factory and ``api.auth``.
"""
