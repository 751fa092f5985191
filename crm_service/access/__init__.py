"""Who may call: API keys, console sessions, per-key rate limits and Idempotency-Key records.

Owns the ``api_keys``, ``console_sessions``, ``rate_limit_slots`` and ``idempotency_keys`` tables.
May import ``crm_service.platform`` and ``crm_service.storage``; never ``api``.
"""
