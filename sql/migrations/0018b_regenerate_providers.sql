-- images_regenerate(id) again, now that 0018_providers.sql gave images the provider and
-- what the image is (0015_regenerate.sql ran before those columns existed).
--
-- Generated again, a row starts over the way a retry does (images_reset_failed in 0018):
-- whatever the old provider drew is forgotten with its media type and size
-- (image_type, image_width, image_height), and so is the provider that drew it (the
-- handle meant something to that provider only), unless the row was pinned to it at
-- INSERT (provider_pinned): a pin is kept. Everything else is as 0015 describes: the
-- same statuses, the same SQLSTATEs, the reason (last_error) kept.

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
        image_type = NULL,
        image_width = NULL,
        image_height = NULL,
        provider = CASE WHEN i.provider_pinned THEN i.provider END,
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
-- `listener roles` ran) come from its line in listener/objects.py (the same signature as
-- 0015's), applied by `listener migrate` after this file (sql/migrations/README.md).
