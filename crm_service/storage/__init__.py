"""Storage of orders, customers and identities: staged merges and the writers' lock (SQL).

May import ``crm_service.platform`` and plain record types; never a service module or ``api``.
"""
