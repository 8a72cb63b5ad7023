-- Optional: least-privilege roles for invalidator. NOT applied by `invalidator migrate`.
--
-- Run once as a superuser or the database owner, after the migrations, then give each
-- role a login (or GRANT it to an existing login role):
--   psql -v ON_ERROR_STOP=1 -f migrations/optional/roles.sql
--   ALTER ROLE invalidator_relay LOGIN PASSWORD '…';      -- the relay daemon
--   GRANT invalidator_writer TO my_app;                    -- your application's role
--
-- invalidator_relay  claims and deletes outbox rows, moves undeliverable ones to outbox_dead.
-- invalidator_writer may only call invalidator.invalidate(); it cannot read or delete the outbox.
-- invalidator_reader reads the tables for `invalidator status`.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'invalidator_relay') THEN
        CREATE ROLE invalidator_relay NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'invalidator_writer') THEN
        CREATE ROLE invalidator_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'invalidator_reader') THEN
        CREATE ROLE invalidator_reader NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA invalidator TO invalidator_relay, invalidator_writer, invalidator_reader;

-- relay: SELECT/DELETE on the outbox (the claim is a DELETE … RETURNING), INSERT on
-- outbox_dead, and the notify check.
GRANT SELECT, DELETE ON invalidator.outbox TO invalidator_relay;
GRANT INSERT ON invalidator.outbox_dead TO invalidator_relay;
GRANT SELECT ON invalidator.schema_migrations TO invalidator_relay;
GRANT EXECUTE ON FUNCTION invalidator.notify_enabled() TO invalidator_relay;

-- writers: only the entry point. invalidate() runs with the caller's rights, so the caller
-- also needs INSERT on the outbox (and the identity sequence); it gets nothing else.
REVOKE EXECUTE ON FUNCTION invalidator.invalidate(text[], text, text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION invalidator.invalidate(text[], text, text, text, jsonb) TO invalidator_writer;
GRANT INSERT ON invalidator.outbox TO invalidator_writer;
GRANT USAGE ON SEQUENCE invalidator.outbox_id_seq TO invalidator_writer;

-- status/check: read-only.
GRANT SELECT ON invalidator.outbox, invalidator.outbox_dead, invalidator.schema_migrations
    TO invalidator_reader;
