"""Who may call: API keys, console sessions and per-key rate limits.

Keys are minted, verified and cached per process here.

Keys and sessions are stored through ``crm_service.storage`` (``keys``, ``sessions``); rate
limits live in a file shared by the API processes of one machine, not in the database. May
import ``crm_service.storage``, ``crm_service.errors`` and ``crm_service.vocabulary``; never
``api``.
"""
