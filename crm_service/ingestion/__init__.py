"""Ingestion: orders and profiles from every channel, by REST batch or bulk CSV.

``records`` holds the rules one record must pass (shared by both paths), ``bulk`` the CSV import.
Storage (staging tables, upserts, the writers' lock) is in ``crm_service.storage``.
"""
