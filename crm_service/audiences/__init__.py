"""Audiences: the live run's customers filtered for campaign tools (pages, CSV stream, export).

Reads the published run only; writes nothing. The queries are in ``crm_service.storage``
(``audiences``, ``runs``). May import ``crm_service.storage``, ``crm_service.errors`` and
``models``; never ``api``.
"""
