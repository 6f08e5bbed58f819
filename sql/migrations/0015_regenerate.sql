-- images_regenerate(id): the operator's repair "generate this image again", at any moment.
--
-- images_operator may not UPDATE the table, and images_retry takes only Failed rows; the
-- obvious psql repair of a generation gone wrong (`UPDATE images SET status =
-- 'ReadyToGenerate', uuid = NULL WHERE id = ...`) needs the table's owner. This function
-- does it for an operator: a Generate, Failed or ReadyToPublish row goes back to
-- ReadyToGenerate, its attempts and unknown outcomes reset (doing it by hand is the
-- operator's go-ahead to pay for another run), its uuid, image and lease cleared, and its
-- reason (last_error) kept, so that what went wrong stays readable.
--
-- At any moment: a listener may be following the row's generation right now. Its next
-- renewal or its write of the result finds the row changed and lets go of it (the
-- fenced writes of sql/queries.sql); the status change wakes every listener at once
-- (images_wakeup_after_update), and the listener that followed it claims it again as
-- soon as its task has ended. The raw UPDATE above, by the table's owner, keeps working
-- the same way: the listener that held the row clears its own lease when it notices.
--
-- SQLSTATEs, as the other operator functions (0010_operator.sql): P0002 when the id is
-- unknown, 55000 when the row is not in one of the three statuses (a ReadyToGenerate row
-- is waiting already; a status of another application is never touched).

CREATE OR REPLACE FUNCTION images_regenerate(id bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    current_status text;
BEGIN
    IF images_regenerate.id IS NULL THEN
        RAISE EXCEPTION 'images_regenerate: id must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT i.status INTO current_status
    FROM images AS i WHERE i.id = images_regenerate.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % does not exist', images_regenerate.id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF current_status = 'ReadyToGenerate' THEN
        RAISE EXCEPTION 'image % is ReadyToGenerate: it is waiting to be generated already',
            images_regenerate.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF current_status <> ALL (ARRAY['Generate', 'Failed', 'ReadyToPublish']::text[]) THEN
        RAISE EXCEPTION 'image % is %: only a Generate, Failed or ReadyToPublish image can '
            'be generated again', images_regenerate.id, current_status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE images AS i
    SET status = 'ReadyToGenerate',
        attempts = 0,
        unknown_outcomes = 0,
        uuid = NULL,
        base64 = NULL,
        locked_by = NULL,
        locked_until = NULL,
        censored = false,
        not_before = pg_catalog.now(),
        generated_by = NULL,
        generation_started_at = NULL,
        generation_finished_at = NULL
    WHERE i.id = images_regenerate.id AND i.status = current_status;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'image % was not regenerated', images_regenerate.id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN images_regenerate.id;
END
$$;

-- Its fixed search_path, EXECUTE taken from PUBLIC and given to images_operator (where
-- `listener roles` ran) come from its line in listener/objects.py, applied by `listener
-- migrate` after this file (sql/migrations/README.md).
