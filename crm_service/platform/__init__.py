"""The platform every capability stands on: settings, PostgreSQL, migrations, logs, metrics.

Also the processes around the service: the background worker, the daily schedule, the server
key (secretbox) and the demo data set. ``db``, ``schema`` and ``embedded`` talk to PostgreSQL
directly (connections, migrations, the embedded server); everything else goes through
``crm_service.storage``. The worker, schedule, metrics and demo import the capabilities they
drive; the rest imports nothing above ``crm_service.errors``.
"""
