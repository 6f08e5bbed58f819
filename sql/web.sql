-- The HTTP server's queries (listener/web/), loaded by listener.sqlfiles.named("web.sql").
-- Only `image` reads base64, one row at a time, for an image shown on the page; the rest
-- tell whether a row has one by `base64 IS NOT NULL`, which reads no TOASTed data.

-- One page of the gallery, newest first, by keyset (id < before): as quick on page 1000 as
-- on page 1. The prompt search is a substring match without any extension, bounded: it
-- scans only the latest `window` ids (the primary key bounds the scan), on the first
-- 1000 characters of each prompt.
-- name: page
SELECT id, left(prompt, 400) AS prompt, length(prompt) > 400 AS prompt_cut, status, style,
       width, height, left(last_error, 400) AS last_error, censored, attempts,
       created_at, updated_at, generation_started_at, generation_finished_at,
       base64 IS NOT NULL AS has_image, provider, image_type, image_width, image_height,
       (locked_by IS NOT NULL AND locked_until >= now()) AS held,
       now() AS now
FROM images
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
  AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)
  AND (%(q)s::text IS NULL OR (
        id > (SELECT coalesce(max(id), 0) - %(window)s::bigint FROM images)
        AND strpos(lower(left(prompt, 1000)), lower(%(q)s::text)) > 0))
ORDER BY id DESC
LIMIT %(limit)s

-- The same columns for given rows (a card that changed).
-- name: cards
SELECT id, left(prompt, 400) AS prompt, length(prompt) > 400 AS prompt_cut, status, style,
       width, height, left(last_error, 400) AS last_error, censored, attempts,
       created_at, updated_at, generation_started_at, generation_finished_at,
       base64 IS NOT NULL AS has_image, provider, image_type, image_width, image_height,
       (locked_by IS NOT NULL AND locked_until >= now()) AS held,
       now() AS now
FROM images
WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id DESC

-- The latest rows' states, for the live updates' comparison (primary key, backwards).
-- name: recent_states
SELECT id, status, updated_at FROM images ORDER BY id DESC LIMIT %(limit)s

-- One image, for a thumbnail or the full view; NULL when larger than the limit given.
-- name: image
SELECT status, updated_at,
       CASE WHEN octet_length(base64) <= %(max)s THEN base64 END AS base64,
       base64 IS NOT NULL AS has_image
FROM images WHERE id = %(id)s

-- The queue (waiting and generating rows): served by the partial and status indexes, so
-- its cost follows the queue, not the table's history.
-- name: queue
SELECT count(*) FILTER (WHERE status = 'ReadyToGenerate') AS waiting,
       count(*) FILTER (WHERE status = 'ReadyToGenerate' AND not_before <= now()
                        AND (locked_until IS NULL OR locked_until < now())) AS due,
       count(*) FILTER (WHERE status = 'Generate') AS generating
FROM images WHERE status IN ('ReadyToGenerate', 'Generate')

-- What this login may do through the page (the operator functions of 0010/0012).
-- name: rights
SELECT current_user AS login,
       coalesce(has_function_privilege(
           to_regprocedure('images_retry(bigint)'), 'EXECUTE'), false) AS retry,
       coalesce(has_function_privilege(
           to_regprocedure('images_cancel(bigint)'), 'EXECUTE'), false) AS cancel,
       coalesce(has_function_privilege(
           to_regprocedure('images_enqueue(text,text,integer,integer,text)'), 'EXECUTE'),
           false) AS enqueue

-- name: styles
SELECT name, title FROM image_styles ORDER BY name

-- name: enqueue
SELECT images_enqueue(%(prompt)s::text, %(style)s::text, %(width)s::integer,
                      %(height)s::integer, %(negative_prompt)s::text) AS id

-- name: retry
SELECT images_retry(%(id)s::bigint) AS id

-- name: cancel
SELECT images_cancel(%(id)s::bigint) AS id
