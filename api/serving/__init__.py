"""The serving lane: gunicorn worker classes and the fast path for one-customer lookups.

``server`` (worker classes whose own error answers are problem+json; the keep-alive worker that
batches lookups), ``fastpath`` (the batched lane for ``/tier`` and the profile, behind the
:class:`~api.serving.fastpath.BatchingLane` interface), ``gunicorn_adapter`` (every gunicorn
internal used, checked when a worker starts; the only module that imports gunicorn),
``gunicorn_hooks`` (gunicorn settings module). May import ``crm_service``; nothing in ``api``
imports it but the factory and ``api.auth``.
"""
