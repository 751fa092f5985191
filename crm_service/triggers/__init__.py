"""Triggers: lifecycle events (the outbox and feed) and webhooks (subscriptions, queue, delivery).

Events are written when a run publishes; webhooks sign and post them with retries.
May import ``crm_service.platform``; never ``api``.
"""
