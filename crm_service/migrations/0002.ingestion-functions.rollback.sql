DROP FUNCTION IF EXISTS crm_parse_timestamp(text, text);
