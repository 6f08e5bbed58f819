-- Named queries of the operator commands (listener enqueue|status|export|retry|cancel|
-- regenerate|watch), loaded by listener.sqlfiles.named("operator.sql"). They call the
-- views and functions of migrations/0010_operator.sql (and images_regenerate,
-- 0015_regenerate.sql), so psql users and the CLI share one surface.
-- Every argument of a function call is cast to the declared type: an exact match is
-- ours, where an untyped or int2 parameter could prefer an overload planted by a role
-- with CREATE on the schema.

-- name: enqueue
SELECT images_enqueue(
    %(prompt)s::text, %(style)s::text, %(width)s::integer, %(height)s::integer,
    %(negative_prompt)s::text
) AS id

-- name: queue
SELECT status, rows, held, due, delayed, oldest_age, last_change FROM images_queue

-- name: in_flight
SELECT count(*) AS rows,
       count(*) FILTER (WHERE lease_expired) AS unfollowed,
       max(age) AS oldest_age
FROM images_in_flight

-- name: recent_failures
SELECT reason, failures, latest, latest_ids FROM images_recent_failures

-- name: listeners
SELECT worker, connected, listening, rows_held, earliest_lease_until, provider
FROM images_listeners

-- Why rows wait (a retry's reason, a paused provider's words: "waiting: ... paid quota
-- used up"), most frequent first; only rows still waiting for a later try.
-- name: waiting_reasons
SELECT last_error AS reason, count(*) AS rows, min(not_before) AS next_try
FROM images
WHERE status = 'ReadyToGenerate' AND last_error IS NOT NULL AND not_before > now()
GROUP BY last_error
ORDER BY rows DESC
LIMIT 10

-- Rows that wait for one provider, and how many connected listeners run it (0018).
-- name: providers
SELECT provider, pinned, generating, listeners, unknown_listeners FROM images_providers

-- Every column but the image itself: its size and kind are enough on a terminal. A prompt
-- is read as far as a cell shows it (listener.sanitize.LIMIT), however long the row's is.
-- name: row_detail
SELECT id, status, left(prompt, 2000) AS prompt, style, width, height,
       left(negative_prompt, 2000) AS negative_prompt, provider, uuid,
       base64 IS NOT NULL AS has_image, image_type, image_width, image_height,
       -- decoded size: 3 bytes per 4 base64 characters, padding and whitespace left out
       length(regexp_replace(base64, '[^A-Za-z0-9+/]', '', 'g')) * 3 / 4 AS image_bytes,
       attempts, last_error, censored, not_before, locked_by, locked_until,
       generated_by, generation_started_at, generation_finished_at,
       generation_finished_at - generation_started_at AS generation_time,
       created_at, updated_at
FROM images WHERE id = %(id)s

-- name: row_state
SELECT id, status, attempts, last_error, locked_by FROM images WHERE id = %(id)s

-- name: image
SELECT status, base64 FROM images WHERE id = %(id)s

-- name: ready_images
SELECT id, base64 FROM images
WHERE status = 'ReadyToPublish' AND base64 IS NOT NULL
ORDER BY id

-- name: retry
SELECT images_retry(%(id)s::bigint) AS id

-- name: retry_failed
SELECT images_retry_failed(coalesce(%(since)s::timestamptz, '-infinity'::timestamptz)) AS count

-- name: cancel
SELECT images_cancel(%(id)s::bigint) AS id

-- name: regenerate
SELECT images_regenerate(%(id)s::bigint) AS id

-- name: providers_one
SELECT count(*) AS generating FROM images
WHERE status = 'Generate' AND provider = %(provider)s
  AND (locked_by IS NULL OR locked_until IS NULL OR locked_until < now())

-- name: requeue
SELECT images_requeue(%(provider)s::text) AS count

-- How many of one provider's generations a live listener still holds (left alone).
-- name: requeue_held
SELECT count(*) AS held FROM images
WHERE status = 'Generate' AND provider = %(provider)s
  AND locked_by IS NOT NULL AND locked_until >= now()
