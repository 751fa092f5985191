-- depends: 0001.initial-schema
-- Parsing helpers shared by REST batches and CSV bulk import, so both apply the same rules.

-- An ISO 8601 date or datetime as timestamptz, or NULL when it is not one. A value without a UTC
-- offset is local time in zone `tz`; a bare date is midnight there. On PostgreSQL >= 16 the check
-- uses pg_input_is_valid (no subtransaction per row); older servers fall back to an exception
-- block, which is correct but slower.
DO $do$
BEGIN
  IF current_setting('server_version_num')::int >= 160000 THEN
    EXECUTE $f$
      CREATE FUNCTION crm_parse_timestamp(raw text, tz text) RETURNS timestamptz
      LANGUAGE sql STABLE PARALLEL SAFE AS $body$
        SELECT CASE
          WHEN raw !~* '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$'
            THEN NULL
          WHEN raw ~* '(Z|[+-]\d{2}(:?\d{2})?)$' AND length(raw) > 10
            THEN CASE WHEN pg_input_is_valid(raw, 'timestamptz') THEN raw::timestamptz END
          ELSE CASE WHEN pg_input_is_valid(raw, 'timestamp') THEN raw::timestamp AT TIME ZONE tz END
        END
      $body$
    $f$;
  ELSE
    EXECUTE $f$
      CREATE FUNCTION crm_parse_timestamp(raw text, tz text) RETURNS timestamptz
      LANGUAGE plpgsql STABLE AS $body$
      BEGIN
        IF raw !~* '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$' THEN
          RETURN NULL;
        END IF;
        IF raw ~* '(Z|[+-]\d{2}(:?\d{2})?)$' AND length(raw) > 10 THEN
          RETURN raw::timestamptz;
        END IF;
        RETURN raw::timestamp AT TIME ZONE tz;
      EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
        RETURN NULL;
      END
      $body$
    $f$;
  END IF;
END
$do$;
