"""The platform every capability stands on: settings, PostgreSQL, migrations, logs, metrics.

Also the processes around the service: the background worker, the daily schedule, retention of
operational tables (housekeeping), the server key (secretbox) and the demo data set.
"""
