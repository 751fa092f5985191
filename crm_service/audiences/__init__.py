"""Audiences: the live run's customers filtered for campaign tools (pages, CSV stream, export).

Reads the published run only; writes nothing. May import ``crm_service.scoring`` (run reads),
``crm_service.platform`` and ``models``; never ``api``.
"""
