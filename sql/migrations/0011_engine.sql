-- The engine's columns and the meaning of updated_at.

-- Runs sent whose outcome never came back (a timeout after sending, a dropped
-- connection, a garbled answer): each may have been generated and paid for. The
-- listener re-sends a row at most UNKNOWN_OUTCOME_RESENDS times over its whole life.
ALTER TABLE images
    ADD COLUMN IF NOT EXISTS unknown_outcomes integer NOT NULL DEFAULT 0;

-- updated_at moves on real changes of a row only. A lease renewal (locked_until) or a
-- release (locked_by, locked_until) is bookkeeping of who holds the row, not a change:
-- the trigger fires on UPDATE OF every other column, a list built here from the table
-- itself (a later migration that adds a column runs this block again).
CREATE OR REPLACE FUNCTION images_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

DO $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
    FROM pg_attribute
    WHERE attrelid = 'images'::regclass AND attnum > 0 AND NOT attisdropped
      AND attname NOT IN ('locked_by', 'locked_until', 'updated_at');
    EXECUTE 'DROP TRIGGER IF EXISTS images_touch_updated_at ON images';
    EXECUTE format(
        'CREATE TRIGGER images_touch_updated_at BEFORE UPDATE OF %s ON images '
        'FOR EACH ROW EXECUTE FUNCTION images_touch_updated_at()',
        cols
    );
END
$$;
