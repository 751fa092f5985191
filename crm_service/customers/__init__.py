"""One customer: ids, profile rules (email, phone, name), lookups, search and provisional tiers.

``ids`` says what a customer id and a channel may be; ``rules`` validates and normalises what
ingestion stores; ``profiles`` is what agents and campaign tools see of one customer (its SQL is
``crm_service.storage.lookups``). May import ``crm_service.storage``, ``crm_service.audiences``
(JSON shaping), ``crm_service.errors`` and ``models``; never ``api``.
"""
