"""One customer: profile rules (email, phone, name), lookups, search and provisional tiers.

``rules`` validates and normalises what ingestion stores; ``profiles`` is what agents and
campaign tools see of one customer. May import ``crm_service.ingestion`` rules,
``crm_service.scoring`` reads and ``crm_service.platform``; never ``api``.
"""
