DROP TABLE IF EXISTS erased_customers;
