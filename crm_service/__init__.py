"""crm-service: customer lifecycle and CRM segmentation (service layer).

Configuration, PostgreSQL access, migrations, ingestion, API keys and the CLI. Depends on
``models`` for numerics; never on ``api``, Flask or marshmallow.
"""

__version__ = "0.1.0"
