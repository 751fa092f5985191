"""Privacy: erasure and export of one customer's data (GDPR Art. 17 and 20), and customer refs.

Erasure reaches every table that holds a customer's data, score partitions included (the
deletes are in ``crm_service.storage.erasure``); ``refs`` computes the pseudonymous reference
events carry. May import ``crm_service.storage`` and ``crm_service.platform``; never ``api``.
"""
