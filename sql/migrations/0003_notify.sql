-- NOTIFY is a doorbell, not a mailbox: it only wakes listeners up; the table is the
-- truth, and listeners sweep after every (re)connect because notifications sent while
-- nobody listened are gone.
--
-- Channel images_wakeup (internal): payload 'ReadyToGenerate' (work for generators) or
--   'Generate' (a generation nobody follows, work for processors). Constant payloads:
--   PostgreSQL folds identical notifications of one transaction into one, and the
--   INSERT trigger is per statement, so a 10,000-row INSERT sends one wake-up.
-- Channel images_done (public, documented): payload {"id": 42, "status": "ReadyToPublish"}
--   when a row reaches ReadyToPublish or Failed. `LISTEN images_done;` in psql to see it.

CREATE OR REPLACE FUNCTION images_wakeup_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR s IN
        SELECT DISTINCT status FROM inserted_rows
        WHERE status IN ('ReadyToGenerate', 'Generate')
    LOOP
        PERFORM pg_notify('images_wakeup', s);
    END LOOP;
    RETURN NULL;
END
$$;

SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS images_wakeup_after_insert ON images;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER images_wakeup_after_insert
    AFTER INSERT ON images
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION images_wakeup_after_insert();

-- A row becomes work again (operator retry, released claim) or a generation loses its
-- follower (released lease). Heartbeats touch only locked_until and never fire this.
CREATE OR REPLACE FUNCTION images_wakeup_after_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('images_wakeup', NEW.status);
    RETURN NULL;
END
$$;

SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS images_wakeup_after_update ON images;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER images_wakeup_after_update
    AFTER UPDATE OF status, locked_by ON images
    FOR EACH ROW
    WHEN (
        NEW.status IN ('ReadyToGenerate', 'Generate')
        AND NEW.locked_by IS NULL
        AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.locked_by IS NOT NULL)
        AND (NEW.status = 'Generate' OR NEW.not_before <= now())
    )
    EXECUTE FUNCTION images_wakeup_after_update();

CREATE OR REPLACE FUNCTION images_announce_done() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'images_done',
        json_build_object('id', NEW.id, 'status', NEW.status)::text
    );
    RETURN NULL;
END
$$;

SET LOCAL client_min_messages = warning;  -- quiet: no "does not exist, skipping"
DROP TRIGGER IF EXISTS images_announce_done ON images;
SET LOCAL client_min_messages = notice;
CREATE TRIGGER images_announce_done
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.status IN ('ReadyToPublish', 'Failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION images_announce_done();
