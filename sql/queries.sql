-- Named queries used by the listener, loaded once by listener.sqlfiles.queries().
-- Each block starts with a line "-- name: <identifier>".

-- The claim: one statement takes a batch of due rows that nobody holds, and makes the
-- lease durable. SKIP LOCKED lets any number of listeners share the table; the lease
-- (locked_by, locked_until) keeps the row theirs after the transaction commits. Counting
-- the attempt here means a row that crashes its listener every time still ends Failed.
-- name: claim_ready
UPDATE images AS i
SET locked_by = %(worker)s,
    locked_until = now() + make_interval(secs => %(lease)s),
    attempts = i.attempts + 1
FROM (
    SELECT id FROM images
    WHERE status = 'ReadyToGenerate'
      AND not_before <= now()
      AND (locked_until IS NULL OR locked_until < now())
      -- a row that breaks a rule cannot move on (its UPDATE would fail the whole
      -- claim): left out, and listed by the view images_blocked (0013_seed_upgrade.sql)
      AND prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]'
      AND (negative_prompt IS NULL OR negative_prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]')
      AND (width IS NULL OR width BETWEEN 64 AND 1024)
      AND (height IS NULL OR height BETWEEN 64 AND 1024)
      AND attempts BETWEEN 0 AND 2147483646
    ORDER BY not_before, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS due
WHERE i.id = due.id
RETURNING i.id, i.prompt, i.style, i.width, i.height, i.negative_prompt, i.attempts,
          i.last_error, i.created_at

-- When nothing is due: the earliest moment a waiting row becomes due (a retry's
-- not_before, or another listener's lease running out; our own leases do not run out).
-- name: next_ready_at
SELECT least(
    (SELECT not_before FROM images
      WHERE status = 'ReadyToGenerate' AND (locked_until IS NULL OR locked_until < now())
        -- a row that breaks a rule cannot move on (its UPDATE would fail the whole
        -- claim): left out, and listed by the view images_blocked (0013_seed_upgrade.sql)
        AND prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]'
        AND (negative_prompt IS NULL OR negative_prompt ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFF8\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0000-\U000E0FFF]')
        AND (width IS NULL OR width BETWEEN 64 AND 1024)
        AND (height IS NULL OR height BETWEEN 64 AND 1024)
        AND attempts BETWEEN 0 AND 2147483646
      ORDER BY not_before LIMIT 1),
    (SELECT min(locked_until) FROM images
      WHERE locked_by IS NOT NULL AND locked_by <> %(worker)s
        AND status = 'ReadyToGenerate' AND locked_until >= now())
) AS at, now() AS now

-- Generations that nobody follows: left by a stopped or crashed listener (lease expired
-- or released) or by the seed service (never leased).
-- name: claim_generating
UPDATE images AS i
SET locked_by = %(worker)s,
    locked_until = now() + make_interval(secs => %(lease)s)
FROM (
    SELECT id FROM images
    WHERE status = 'Generate' AND (locked_until IS NULL OR locked_until < now())
      -- a row that breaks a rule cannot move on: left out (view images_blocked)
      AND uuid IS NOT NULL AND attempts >= 0
    ORDER BY locked_until NULLS FIRST, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS orphan
WHERE i.id = orphan.id
RETURNING i.id, i.uuid, i.prompt,
          extract(epoch FROM now() - coalesce(i.generation_started_at, i.updated_at))::float8 AS age

-- name: next_generating_at
SELECT min(locked_until) AS at, now() AS now FROM images
WHERE status = 'Generate' AND locked_until >= now() AND locked_by <> %(worker)s

-- The API accepted the run: the uuid is durable before anything else happens. Fenced on
-- the lease, so a listener that lost the row cannot overwrite the new owner's work.
-- name: record_accepted
UPDATE images
SET status = 'Generate', uuid = %(uuid)s, last_error = NULL, generated_by = %(worker)s,
    generation_started_at = now(), generation_finished_at = NULL,
    -- kept when this process follows the generation itself; released (which wakes the
    -- processors elsewhere) when it runs the generator role only
    locked_until = CASE WHEN %(keep)s THEN now() + make_interval(secs => %(lease)s) END,
    locked_by = CASE WHEN %(keep)s THEN %(worker)s END
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'ReadyToGenerate'

-- Give a claimed row back without counting the attempt (API busy, credentials refused,
-- shutdown before the call was made).
-- name: release_uncounted
UPDATE images
SET locked_by = NULL, locked_until = NULL, attempts = greatest(attempts - 1, 0),
    not_before = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'ReadyToGenerate'

-- A transient failure: the attempt counts, the reason is kept, the row waits.
-- name: retry_later
UPDATE images
SET locked_by = NULL, locked_until = NULL, last_error = %(error)s,
    not_before = now() + make_interval(secs => %(delay)s)
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'ReadyToGenerate'

-- name: fail
UPDATE images
SET status = 'Failed', last_error = %(error)s, censored = %(censored)s,
    locked_by = NULL, locked_until = NULL, generation_finished_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = %(from_status)s

-- The result, handed out once by the API, in one transaction with the status.
-- name: finalise
UPDATE images
SET status = 'ReadyToPublish', base64 = %(base64)s, uuid = %(uuid)s, last_error = NULL,
    censored = false, locked_by = NULL, locked_until = NULL, generation_finished_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'Generate'

-- What became of a row whose fenced write matched nothing.
-- name: row_state
SELECT status, uuid, locked_by FROM images WHERE id = %(id)s

-- name: heartbeat
UPDATE images SET locked_until = now() + make_interval(secs => %(lease)s)
WHERE locked_by = %(worker)s AND status IN ('ReadyToGenerate', 'Generate')

-- On shutdown: everything this worker holds goes back, at once, so other listeners (or
-- the next start) resume it without waiting for the lease to run out.
-- name: release_all
UPDATE images SET locked_by = NULL, locked_until = NULL
WHERE locked_by = %(worker)s AND status IN ('ReadyToGenerate', 'Generate')

-- name: style_exists
SELECT EXISTS (SELECT 1 FROM image_styles WHERE name = %(style)s) AS known,
       (SELECT string_agg(name, ', ' ORDER BY name) FROM image_styles) AS known_styles
