-- invalidator migration 1: schema, outbox, dead rows, migration history, invalidate().
--
-- Apply with `invalidator migrate`, or in order with your own tool:
--   psql -v ON_ERROR_STOP=1 --single-transaction -f migrations/V001__outbox.sql
-- (the V<n>__<name>.sql names are also what Flyway expects).
-- Everything lives in schema `invalidator`; nothing outside it is created or changed.
-- Every statement is idempotent, so applying this file twice is harmless.

CREATE SCHEMA IF NOT EXISTS invalidator;

COMMENT ON SCHEMA invalidator IS
  'transactional-outbox cache invalidation; managed by `invalidator migrate`';

-- Which migration files have been applied. `checksum` is the SHA-256 of the file as
-- `invalidator migrate` embeds it; a row written by the file itself (applied with psql or
-- Flyway) has checksum NULL until `invalidator migrate` adopts it.
CREATE TABLE IF NOT EXISTS invalidator.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The largest key of an array, in bytes. IMMUTABLE so a CHECK constraint may use it.
CREATE OR REPLACE FUNCTION invalidator.max_key_octets(keys text[])
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT max(octet_length(k)) FROM unnest(keys) AS k $$;

-- One row per invalidation event, written in the application's own transaction.
-- The relay claims, publishes and deletes rows; a row here is an event not yet published.
CREATE TABLE IF NOT EXISTS invalidator.outbox (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    -- clock_timestamp(), not now(): end-to-end latency is measured from the write, and a
    -- long application transaction would otherwise look like a slow pipeline.
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    topic         text,
    partition_key text        NOT NULL,
    op            text        NOT NULL DEFAULT 'delete',
    keys          text[]      NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT outbox_event_id_unique UNIQUE (event_id),
    CONSTRAINT outbox_op_must_be_delete_or_bump CHECK (op IN ('delete', 'bump')),
    CONSTRAINT outbox_keys_must_not_be_empty CHECK (cardinality(keys) >= 1),
    CONSTRAINT outbox_keys_at_most_1000 CHECK (cardinality(keys) <= 1000),
    CONSTRAINT outbox_keys_one_dimensional CHECK (array_ndims(keys) = 1),
    CONSTRAINT outbox_key_must_not_be_null CHECK (array_position(keys, NULL) IS NULL),
    CONSTRAINT outbox_key_must_not_be_empty_string CHECK (array_position(keys, '') IS NULL),
    CONSTRAINT outbox_key_at_most_1024_bytes CHECK (invalidator.max_key_octets(keys) <= 1024),
    CONSTRAINT outbox_partition_key_not_empty CHECK (partition_key <> ''),
    CONSTRAINT outbox_topic_not_empty CHECK (topic IS NULL OR topic <> ''),
    CONSTRAINT outbox_headers_is_object CHECK (jsonb_typeof(headers) = 'object')
);

-- Rows the broker can never accept (e.g. larger than message.max.bytes), moved here by the
-- relay with the error so that they never block the rows behind them.
CREATE TABLE IF NOT EXISTS invalidator.outbox_dead (
    id            bigint      PRIMARY KEY,
    event_id      uuid        NOT NULL,
    created_at    timestamptz NOT NULL,
    topic         text,
    partition_key text        NOT NULL,
    op            text        NOT NULL,
    keys          text[]      NOT NULL,
    headers       jsonb       NOT NULL,
    error         text        NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now()
);

-- The one documented entry point. Call it inside the transaction that changes the domain
-- rows; the invalidation then exists if and only if that transaction commits.
-- Bad input raises here with a message naming the problem (SQLSTATE 22023); the table's
-- CHECK constraints catch the same problems for rows inserted directly.
CREATE OR REPLACE FUNCTION invalidator.invalidate(
    keys          text[],
    op            text  DEFAULT 'delete',
    partition_key text  DEFAULT NULL,
    topic         text  DEFAULT NULL,
    headers       jsonb DEFAULT '{}'::jsonb
)
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    n     integer := coalesce(cardinality(keys), 0);
    i     integer;
    eid   uuid;
BEGIN
    IF op IS NULL OR op NOT IN ('delete', 'bump') THEN
        RAISE EXCEPTION 'invalidator.invalidate: unknown op %', coalesce(quote_literal(op), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'op must be ''delete'' (remove the keys) or ''bump'' (increment version keys)';
    END IF;
    IF n = 0 THEN
        RAISE EXCEPTION 'invalidator.invalidate: keys must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pass at least one cache key, e.g. ARRAY[''product:42'']';
    END IF;
    IF array_ndims(keys) <> 1 THEN
        RAISE EXCEPTION 'invalidator.invalidate: keys must be a one-dimensional array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 1000 THEN
        RAISE EXCEPTION 'invalidator.invalidate: too many keys (%); at most 1000 per call', n
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'split the keys over several calls, or bump a namespace version key instead';
    END IF;
    FOR i IN 1 .. n LOOP
        IF keys[i] IS NULL THEN
            RAISE EXCEPTION 'invalidator.invalidate: key % is NULL', i
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF keys[i] = '' THEN
            RAISE EXCEPTION 'invalidator.invalidate: key % is an empty string', i
                USING ERRCODE = 'invalid_parameter_value';
        ELSIF octet_length(keys[i]) > 1024 THEN
            RAISE EXCEPTION 'invalidator.invalidate: key % is too long (% bytes); at most 1024 bytes',
                    i, octet_length(keys[i])
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF partition_key = '' THEN
        RAISE EXCEPTION 'invalidator.invalidate: partition_key must not be an empty string'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pass NULL to use the first key';
    END IF;
    IF topic = '' THEN
        RAISE EXCEPTION 'invalidator.invalidate: topic must not be an empty string'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pass NULL to use the relay''s --topic';
    END IF;
    IF headers IS NOT NULL AND jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'invalidator.invalidate: headers must be a JSON object, got %', jsonb_typeof(headers)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. ''{"traceparent": "00-…-01"}''::jsonb';
    END IF;

    INSERT INTO invalidator.outbox (topic, partition_key, op, keys, headers)
    VALUES (topic, coalesce(partition_key, keys[1]), op, keys, coalesce(headers, '{}'::jsonb))
    RETURNING event_id INTO eid;
    RETURN eid;
END
$fn$;

COMMENT ON FUNCTION invalidator.invalidate(text[], text, text, text, jsonb) IS
  'queue a cache invalidation in the current transaction; returns its event_id';

INSERT INTO invalidator.schema_migrations (version, name) VALUES (1, 'outbox')
ON CONFLICT (version) DO NOTHING;
