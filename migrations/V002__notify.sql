-- invalidator migration 2: the opt-in wake-up trigger.
--
-- `SELECT invalidator.enable_notify();` installs a statement-level trigger on the outbox that
-- calls pg_notify('invalidator_outbox', '') so that a LISTENing relay wakes up at once.
-- It is off by default: a transaction that NOTIFYs takes a database-wide lock at commit,
-- which serializes those commits (the benchmark measures that cost). The relay polls
-- either way; a notification is only a hint.

CREATE OR REPLACE FUNCTION invalidator.notify_outbox()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM pg_notify('invalidator_outbox', '');
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION invalidator.enable_notify()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- CREATE OR REPLACE TRIGGER (PostgreSQL 14+) would be shorter; this works on 12 and 13 too.
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'invalidator.outbox'::regclass AND tgname = 'outbox_notify'
    ) THEN
        CREATE TRIGGER outbox_notify
            AFTER INSERT ON invalidator.outbox
            FOR EACH STATEMENT EXECUTE FUNCTION invalidator.notify_outbox();
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION invalidator.disable_notify()
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$ DROP TRIGGER IF EXISTS outbox_notify ON invalidator.outbox $fn$;

-- Whether the trigger is installed; the relay LISTENs only when it is.
CREATE OR REPLACE FUNCTION invalidator.notify_enabled()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'invalidator.outbox'::regclass AND tgname = 'outbox_notify'
    )
$fn$;

INSERT INTO invalidator.schema_migrations (version, name) VALUES (2, 'notify')
ON CONFLICT (version) DO NOTHING;
