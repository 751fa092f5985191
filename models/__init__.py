"""Pure numerics for customer-base analysis (RFM summaries, BG/NBD, Gamma-Gamma, churn).

No I/O and no imports from ``crm_service`` or ``api``.
"""
