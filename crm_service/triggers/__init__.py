"""Triggers: lifecycle events (the outbox and feed) and webhooks (subscriptions, queue, delivery).

Events are written when a run publishes; webhooks sign (``signing``) and post them with
retries, to receivers the SSRF guard (``ssrf``) allows. The SQL is in ``crm_service.storage``
(``events``, ``webhooks``). May import ``crm_service.storage``, ``crm_service.platform`` and
``crm_service.vocabulary``; never ``api``.
"""
