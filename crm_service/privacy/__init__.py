"""Privacy: erasure and export of one customer's data (GDPR Art. 17 and 20).

Erasure reaches every table that holds a customer's data, score partitions included.
"""
