"""Ingestion: orders and profiles from every channel, by REST batch or bulk CSV.

``records`` holds the rules one record must pass (shared by both paths), ``bulk`` the CSV import
(one transaction: all of a file or none of it). Storage (staging tables, upserts, the writers'
lock) is in ``crm_service.storage``. May import ``crm_service.customers``,
``crm_service.privacy``, ``crm_service.storage`` and ``crm_service.platform``; never ``api``.
"""
