-- Named queries used by the listener, loaded once by listener.sqlfiles.queries().
-- Each block starts with a line "-- name: <identifier>".

-- The claim: one statement takes a batch of due rows that nobody holds, and makes the
-- lease durable; with the account's shared budget, a slot for each row in the same
-- statement (a row is never claimed without one, and the budget costs no round trip of
-- its own). SKIP LOCKED lets any number of listeners share the table; the lease
-- (locked_by, locked_until) keeps the row theirs after the transaction commits. Counting
-- the attempt here means a row that crashes its listener every time still ends Failed.
-- Highest priority first, oldest first within one (index images_ready_priority_idx).
-- name: claim_ready
WITH free AS MATERIALIZED (
    -- The account's slots this claim may use, one per row (docs/flow-control.md): ours
    -- kept from earlier claims (`mine`) first, then free ones (no live lease, and not
    -- taken by a row still generating). None when no account is given (a store
    -- without the shared budget), which leaves the claim unbounded by slots.
    SELECT f.slot FROM listener_slots AS f
    WHERE f.account = %(account)s
      AND f.slot < (SELECT effective FROM listener_limits WHERE account = %(account)s)
      AND ((f.holder = %(worker)s AND f.slot = ANY (%(mine)s::integer[]))
           OR ((f.holder IS NULL OR f.held_until < now())
               AND NOT EXISTS (SELECT 1 FROM images AS g
                               WHERE g.id = f.image_id AND g.status = 'Generate')))
    ORDER BY f.slot = ANY (%(mine)s::integer[]) DESC, f.slot
    LIMIT %(limit)s
    FOR UPDATE OF f SKIP LOCKED
),
claimed AS (
    UPDATE images AS i
    SET locked_by = %(worker)s,
        locked_until = now() + make_interval(secs => %(lease)s::float8),
        attempts = i.attempts + 1
    FROM (
        SELECT id FROM images
        WHERE status = 'ReadyToGenerate'
          AND not_before <= now()
          AND (locked_until IS NULL OR locked_until < now())
          -- a row a live task of this process holds, its lease lapsed (a write that waited
          -- out a database outage): that task renews or releases it. The process names
          -- them (Leases); a lapsed lease of ours that no task holds is claimable.
          AND id <> ALL (%(held)s::bigint[])
          -- for any provider, or pinned to ours (0018_providers.sql)
          AND (provider IS NULL OR provider = %(provider)s)
        ORDER BY priority DESC, not_before, id
        LIMIT CASE WHEN %(account)s::text IS NULL THEN %(limit)s
                   ELSE (SELECT count(*) FROM free) END
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE i.id = due.id
    -- a bounded piece of each prompt, after its leading blanks (images_prompt_head, 0016);
    -- a text that starts with a printable ASCII character has none, and its piece is its
    -- head: left() then, not the function (a call with a fixed search_path, not inlined)
    -- waited / age (seconds since due, since committed) feed the HTTP server's metrics
    RETURNING i.id,
              CASE WHEN ascii(i.prompt) BETWEEN 33 AND 126 THEN left(i.prompt, 2000)
                   ELSE images_prompt_head(i.prompt, 2000) END AS prompt,
              i.style, i.width, i.height,
              CASE WHEN ascii(i.negative_prompt) BETWEEN 33 AND 126
                   THEN left(i.negative_prompt, 2000)
                   ELSE images_prompt_head(i.negative_prompt, 2000) END AS negative_prompt,
              i.attempts,
              i.last_error, i.unknown_outcomes,
              -- the style's words, for a provider that expresses styles in words (0018)
              (SELECT st.system_prompt FROM image_styles AS st
                WHERE st.name = coalesce(i.style, %(default_style)s)) AS style_prompt,
              extract(epoch FROM clock_timestamp() - i.not_before)::float8 AS waited,
              extract(epoch FROM clock_timestamp() - i.created_at)::float8 AS age
),
-- each row claimed with a slot of its own
paired AS (
    SELECT c.id, f.slot
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM claimed) AS c
    JOIN (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM free) AS f USING (n)
),
bound AS (
    UPDATE listener_slots AS s
    SET holder = %(worker)s, held_until = now() + make_interval(secs => %(lease)s::float8),
        -- a generation's slot names its row: a generation outliving its holder keeps it
        image_id = CASE WHEN %(bind)s THEN p.id END
    FROM paired AS p
    WHERE s.account = %(account)s AND s.slot = p.slot
),
-- fewer rows than asked for: nothing more to do, so our unused slots go back to the
-- table, where other listeners may take them
spared AS (
    UPDATE listener_slots AS s SET holder = NULL, held_until = NULL
    WHERE s.account = %(account)s AND s.holder = %(worker)s
      AND s.slot = ANY (%(mine)s::integer[])
      AND s.slot NOT IN (SELECT slot FROM paired)
      AND (SELECT count(*) FROM claimed) < %(limit)s
)
-- one row at least: how many slots there were (0: the account's budget is spent)
SELECT c.*, p.slot, (SELECT count(*) FROM free)::integer AS free_slots
FROM (VALUES (true)) AS one (x)
LEFT JOIN (claimed AS c LEFT JOIN paired AS p ON p.id = c.id) ON true

-- The fair share (docs/flow-control.md, "Order"): one claim in PRIORITY_FAIR_SHARE takes
-- the oldest due rows whatever their priority, so urgent rows never starve the others.
-- The same statement as claim_ready but for its ORDER BY (keep them alike).
-- name: claim_ready_oldest
WITH free AS MATERIALIZED (
    -- The account's slots this claim may use, one per row (docs/flow-control.md): ours
    -- kept from earlier claims (`mine`) first, then free ones (no live lease, and not
    -- taken by a row still generating). None when no account is given (a store
    -- without the shared budget), which leaves the claim unbounded by slots.
    SELECT f.slot FROM listener_slots AS f
    WHERE f.account = %(account)s
      AND f.slot < (SELECT effective FROM listener_limits WHERE account = %(account)s)
      AND ((f.holder = %(worker)s AND f.slot = ANY (%(mine)s::integer[]))
           OR ((f.holder IS NULL OR f.held_until < now())
               AND NOT EXISTS (SELECT 1 FROM images AS g
                               WHERE g.id = f.image_id AND g.status = 'Generate')))
    ORDER BY f.slot = ANY (%(mine)s::integer[]) DESC, f.slot
    LIMIT %(limit)s
    FOR UPDATE OF f SKIP LOCKED
),
claimed AS (
    UPDATE images AS i
    SET locked_by = %(worker)s,
        locked_until = now() + make_interval(secs => %(lease)s::float8),
        attempts = i.attempts + 1
    FROM (
        SELECT id FROM images
        WHERE status = 'ReadyToGenerate'
          AND not_before <= now()
          AND (locked_until IS NULL OR locked_until < now())
          -- a row a live task of this process holds, its lease lapsed (a write that waited
          -- out a database outage): that task renews or releases it. The process names
          -- them (Leases); a lapsed lease of ours that no task holds is claimable.
          AND id <> ALL (%(held)s::bigint[])
          -- for any provider, or pinned to ours (0018_providers.sql)
          AND (provider IS NULL OR provider = %(provider)s)
        ORDER BY not_before, id
        LIMIT CASE WHEN %(account)s::text IS NULL THEN %(limit)s
                   ELSE (SELECT count(*) FROM free) END
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE i.id = due.id
    -- a bounded piece of each prompt, after its leading blanks (images_prompt_head, 0016);
    -- a text that starts with a printable ASCII character has none, and its piece is its
    -- head: left() then, not the function (a call with a fixed search_path, not inlined)
    -- waited / age (seconds since due, since committed) feed the HTTP server's metrics
    RETURNING i.id,
              CASE WHEN ascii(i.prompt) BETWEEN 33 AND 126 THEN left(i.prompt, 2000)
                   ELSE images_prompt_head(i.prompt, 2000) END AS prompt,
              i.style, i.width, i.height,
              CASE WHEN ascii(i.negative_prompt) BETWEEN 33 AND 126
                   THEN left(i.negative_prompt, 2000)
                   ELSE images_prompt_head(i.negative_prompt, 2000) END AS negative_prompt,
              i.attempts,
              i.last_error, i.unknown_outcomes,
              -- the style's words, for a provider that expresses styles in words (0018)
              (SELECT st.system_prompt FROM image_styles AS st
                WHERE st.name = coalesce(i.style, %(default_style)s)) AS style_prompt,
              extract(epoch FROM clock_timestamp() - i.not_before)::float8 AS waited,
              extract(epoch FROM clock_timestamp() - i.created_at)::float8 AS age
),
-- each row claimed with a slot of its own
paired AS (
    SELECT c.id, f.slot
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM claimed) AS c
    JOIN (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM free) AS f USING (n)
),
bound AS (
    UPDATE listener_slots AS s
    SET holder = %(worker)s, held_until = now() + make_interval(secs => %(lease)s::float8),
        -- a generation's slot names its row: a generation outliving its holder keeps it
        image_id = CASE WHEN %(bind)s THEN p.id END
    FROM paired AS p
    WHERE s.account = %(account)s AND s.slot = p.slot
),
-- fewer rows than asked for: nothing more to do, so our unused slots go back to the
-- table, where other listeners may take them
spared AS (
    UPDATE listener_slots AS s SET holder = NULL, held_until = NULL
    WHERE s.account = %(account)s AND s.holder = %(worker)s
      AND s.slot = ANY (%(mine)s::integer[])
      AND s.slot NOT IN (SELECT slot FROM paired)
      AND (SELECT count(*) FROM claimed) < %(limit)s
)
-- one row at least: how many slots there were (0: the account's budget is spent)
SELECT c.*, p.slot, (SELECT count(*) FROM free)::integer AS free_slots
FROM (VALUES (true)) AS one (x)
LEFT JOIN (claimed AS c LEFT JOIN paired AS p ON p.id = c.id) ON true

-- The same claim, leaving out every row that breaks a rule of the table: used only after
-- the claim above failed on one (a rule re-added NOT VALID after an operator changed a
-- row), for a while, so one such row never stops the others. The predicates cost a
-- regular expression per candidate row, which the hot path does not pay.
-- name: claim_ready_checked
WITH free AS MATERIALIZED (
    -- The account's slots this claim may use, one per row (docs/flow-control.md): ours
    -- kept from earlier claims (`mine`) first, then free ones (no live lease, and not
    -- taken by a row still generating). None when no account is given (a store
    -- without the shared budget), which leaves the claim unbounded by slots.
    SELECT f.slot FROM listener_slots AS f
    WHERE f.account = %(account)s
      AND f.slot < (SELECT effective FROM listener_limits WHERE account = %(account)s)
      AND ((f.holder = %(worker)s AND f.slot = ANY (%(mine)s::integer[]))
           OR ((f.holder IS NULL OR f.held_until < now())
               AND NOT EXISTS (SELECT 1 FROM images AS g
                               WHERE g.id = f.image_id AND g.status = 'Generate')))
    ORDER BY f.slot = ANY (%(mine)s::integer[]) DESC, f.slot
    LIMIT %(limit)s
    FOR UPDATE OF f SKIP LOCKED
),
claimed AS (
    UPDATE images AS i
    SET locked_by = %(worker)s,
        locked_until = now() + make_interval(secs => %(lease)s::float8),
        attempts = i.attempts + 1
    FROM (
        SELECT id FROM images
        WHERE status = 'ReadyToGenerate'
          AND not_before <= now()
          AND (locked_until IS NULL OR locked_until < now())
          -- a row a live task of this process holds, its lease lapsed (a write that waited
          -- out a database outage): that task renews or releases it. The process names
          -- them (Leases); a lapsed lease of ours that no task holds is claimable.
          AND id <> ALL (%(held)s::bigint[])
          -- for any provider, or pinned to ours (0018_providers.sql)
          AND (provider IS NULL OR provider = %(provider)s)
          -- a row that breaks a rule cannot move on (its UPDATE would fail the whole
          -- claim): left out, and listed by the view images_blocked (0013_seed_upgrade.sql)
          -- at most 100000 / 10000 characters (0016), decided from octet_length first
          AND (octet_length(prompt) <= 100000
               OR (octet_length(prompt) <= 400000 AND char_length(prompt) <= 100000))
          AND (negative_prompt IS NULL OR octet_length(negative_prompt) <= 10000
               OR (octet_length(negative_prompt) <= 40000
                   AND char_length(negative_prompt) <= 10000))
          -- shows something in its first 100000 characters
          AND (left(prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
               OR left(prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
          AND (negative_prompt IS NULL OR left(negative_prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
               OR left(negative_prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
          AND (width IS NULL OR width BETWEEN 64 AND 1024)
          AND (height IS NULL OR height BETWEEN 64 AND 1024)
          AND attempts BETWEEN 0 AND 2147483646
        ORDER BY priority DESC, not_before, id
        LIMIT CASE WHEN %(account)s::text IS NULL THEN %(limit)s
                   ELSE (SELECT count(*) FROM free) END
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE i.id = due.id
    -- a bounded piece of each prompt, after its leading blanks (images_prompt_head, 0016);
    -- a text that starts with a printable ASCII character has none, and its piece is its
    -- head: left() then, not the function (a call with a fixed search_path, not inlined)
    -- waited / age (seconds since due, since committed) feed the HTTP server's metrics
    RETURNING i.id,
              CASE WHEN ascii(i.prompt) BETWEEN 33 AND 126 THEN left(i.prompt, 2000)
                   ELSE images_prompt_head(i.prompt, 2000) END AS prompt,
              i.style, i.width, i.height,
              CASE WHEN ascii(i.negative_prompt) BETWEEN 33 AND 126
                   THEN left(i.negative_prompt, 2000)
                   ELSE images_prompt_head(i.negative_prompt, 2000) END AS negative_prompt,
              i.attempts,
              i.last_error, i.unknown_outcomes,
              -- the style's words, for a provider that expresses styles in words (0018)
              (SELECT st.system_prompt FROM image_styles AS st
                WHERE st.name = coalesce(i.style, %(default_style)s)) AS style_prompt,
              extract(epoch FROM clock_timestamp() - i.not_before)::float8 AS waited,
              extract(epoch FROM clock_timestamp() - i.created_at)::float8 AS age
),
-- each row claimed with a slot of its own
paired AS (
    SELECT c.id, f.slot
    FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM claimed) AS c
    JOIN (SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM free) AS f USING (n)
),
bound AS (
    UPDATE listener_slots AS s
    SET holder = %(worker)s, held_until = now() + make_interval(secs => %(lease)s::float8),
        -- a generation's slot names its row: a generation outliving its holder keeps it
        image_id = CASE WHEN %(bind)s THEN p.id END
    FROM paired AS p
    WHERE s.account = %(account)s AND s.slot = p.slot
),
-- fewer rows than asked for: nothing more to do, so our unused slots go back to the
-- table, where other listeners may take them
spared AS (
    UPDATE listener_slots AS s SET holder = NULL, held_until = NULL
    WHERE s.account = %(account)s AND s.holder = %(worker)s
      AND s.slot = ANY (%(mine)s::integer[])
      AND s.slot NOT IN (SELECT slot FROM paired)
      AND (SELECT count(*) FROM claimed) < %(limit)s
)
-- one row at least: how many slots there were (0: the account's budget is spent)
SELECT c.*, p.slot, (SELECT count(*) FROM free)::integer AS free_slots
FROM (VALUES (true)) AS one (x)
LEFT JOIN (claimed AS c LEFT JOIN paired AS p ON p.id = c.id) ON true

-- A claim whose answer was lost (its connection broke with the statement in flight, or
-- a cancellation could not be settled) may have taken rows that no task of ours holds:
-- given back, uncounted, with the slots they were bound to and any slot of ours this
-- process does not know of (`slots`: those it holds). `held`: the rows our tasks hold,
-- and those handed to them a moment ago.
-- name: release_unsettled
WITH released AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL,
        attempts = greatest(attempts - 1, 0)
    WHERE locked_by = %(worker)s AND status = 'ReadyToGenerate'
      AND id <> ALL (%(held)s::bigint[])
    RETURNING id
),
slots AS (
    UPDATE listener_slots SET holder = NULL, held_until = NULL
    WHERE holder = %(worker)s
      AND (image_id IN (SELECT id FROM released)
           OR (account = %(account)s AND slot <> ALL (%(slots)s::integer[])))
)
SELECT count(*)::integer AS released FROM released

-- When nothing is due: the earliest moment a waiting row becomes due (a retry's
-- not_before, or a lease running out; the leases of rows our live tasks hold do not run
-- out). Asked after a pass and at least every LEASE_TIMEOUT / 3 in between.
-- name: next_ready_at
SELECT least(
    (SELECT not_before FROM images
      WHERE status = 'ReadyToGenerate' AND (locked_until IS NULL OR locked_until < now())
        AND id <> ALL (%(held)s::bigint[])
        AND (provider IS NULL OR provider = %(provider)s)
        -- a row that breaks a rule cannot move on (its UPDATE would fail the whole
        -- claim): left out, and listed by the view images_blocked (0013_seed_upgrade.sql)
        -- at most 100000 / 10000 characters (0016), decided from octet_length first
        AND (octet_length(prompt) <= 100000
             OR (octet_length(prompt) <= 400000 AND char_length(prompt) <= 100000))
        AND (negative_prompt IS NULL OR octet_length(negative_prompt) <= 10000
             OR (octet_length(negative_prompt) <= 40000
                 AND char_length(negative_prompt) <= 10000))
        -- shows something in its first 100000 characters
        AND (left(prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
             OR left(prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
        AND (negative_prompt IS NULL OR left(negative_prompt, 1000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]'
             OR left(negative_prompt, 100000) ~ '[^\u0001-\u0020\u007F-\u00A0\u00AD\u034F\u061C\u115F-\u1160\u1680\u17B4-\u17B5\u180B-\u180F\u2000-\u200F\u2028-\u202F\u205F-\u206F\u2800\u3000\u3164\uFDD0-\uFDEF\uFE00-\uFE0F\uFEFF\uFFA0\uFFF0-\uFFFB\uFFFE-\uFFFF\U0001BCA0-\U0001BCA3\U00013430-\U0001343F\U00013441-\U00013442\U0001D159\U0001D173-\U0001D17A\U000E0000-\U000E0FFF\U0001FFFE-\U0001FFFF\U0002FFFE-\U0002FFFF\U0003FFFE-\U0003FFFF\U0004FFFE-\U0004FFFF\U0005FFFE-\U0005FFFF\U0006FFFE-\U0006FFFF\U0007FFFE-\U0007FFFF\U0008FFFE-\U0008FFFF\U0009FFFE-\U0009FFFF\U000AFFFE-\U000AFFFF\U000BFFFE-\U000BFFFF\U000CFFFE-\U000CFFFF\U000DFFFE-\U000DFFFF\U000EFFFE-\U000EFFFF\U000FFFFE-\U000FFFFF\U0010FFFE-\U0010FFFF]')
        AND (width IS NULL OR width BETWEEN 64 AND 1024)
        AND (height IS NULL OR height BETWEEN 64 AND 1024)
        AND attempts BETWEEN 0 AND 2147483646
      ORDER BY not_before LIMIT 1),
    (SELECT min(locked_until) FROM images
      WHERE locked_by IS NOT NULL AND id <> ALL (%(held)s::bigint[])
        AND status = 'ReadyToGenerate' AND locked_until >= now()
        AND (provider IS NULL OR provider = %(provider)s))
) AS at, now() AS now

-- Generations that nobody follows: left by a stopped or crashed listener (lease expired
-- or released) or by the seed service (never leased). A row released after an internal
-- error keeps locked_until as its back-off, without an owner.
-- name: claim_generating
UPDATE images AS i
SET locked_by = %(worker)s,
    locked_until = now() + make_interval(secs => %(lease)s::float8)
FROM (
    SELECT id FROM images
    WHERE status = 'Generate' AND (locked_until IS NULL OR locked_until < now())
      AND id <> ALL (%(held)s::bigint[])  -- see claim_ready
      -- only generations our provider accepted (a row written by a listener older than
      -- 0018 names none: the seed's provider's, %(legacy)s)
      AND coalesce(provider, %(legacy)s) = %(provider)s
      -- a row that breaks a rule cannot move on: left out (view images_blocked)
      AND uuid IS NOT NULL AND attempts >= 0
    ORDER BY locked_until NULLS FIRST, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS orphan
WHERE i.id = orphan.id
-- never the prompt: following a generation does not need it
RETURNING i.id, i.uuid AS handle, i.width, i.height, i.attempts,
          extract(epoch FROM now() - coalesce(i.generation_started_at, i.updated_at))::float8 AS age

-- When the next lease of a Generate row that no live task of ours holds runs out (a dead
-- listener's generations are adopted then, not at the sweep). Asked after a pass and at
-- least every LEASE_TIMEOUT / 3 in between: a row enters Generate leased, which rings
-- nobody, and each renewal moves its lease on.
-- A generation nobody holds already (a lapsed or no lease) is due now: a claim may have
-- skipped it (locked by a dying listener's backend, or by an operator), and a loop that
-- asked only for leases still to run out would never look at it again before the sweep.
-- name: next_generating_at
SELECT min(coalesce(locked_until, now())) AS at, now() AS now FROM images
WHERE status = 'Generate'
  AND id <> ALL (%(held)s::bigint[])
  AND coalesce(provider, %(legacy)s) = %(provider)s
  AND uuid IS NOT NULL AND attempts >= 0  -- as claim_generating: rows that can move on

-- The fenced writes. Each is one statement that either writes the row (`written`: it is
-- still ours, in the status its task expects) or, when the row changed under this
-- listener (an operator moved it or set a status of its own, another listener took it
-- over, it was deleted), lets go of it: our lease on it is cleared where it still names
-- us (`let_go`), so the row is nobody's and every listener is woken for it (the trigger
-- images_wakeup_after_update, when it is due). The last SELECT reports the row as it
-- was when the statement began, for `listener.store`: a retry whose first attempt
-- committed but whose answer was lost finds its own write there, which is success.

-- The API accepted the run: the uuid is durable before anything else happens. A retry
-- that finds the row already Generate with this uuid and our lease keeps that lease.
-- name: record_accepted
WITH written AS (
    UPDATE images
    SET status = 'Generate', uuid = %(uuid)s, last_error = NULL, generated_by = %(worker)s,
        provider = %(provider)s,  -- the handle means something to this provider only
        generation_started_at = now(), generation_finished_at = NULL,
        -- kept when this process follows the generation itself; released (which wakes
        -- the processors elsewhere) when it runs the generator role only
        locked_until = CASE WHEN %(keep)s THEN now() + make_interval(secs => %(lease)s::float8) END,
        locked_by = CASE WHEN %(keep)s THEN %(worker)s END
    WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'ReadyToGenerate'
    RETURNING id
),
let_go AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = %(id)s AND locked_by = %(worker)s AND NOT EXISTS (SELECT FROM written)
      AND NOT (status = 'Generate' AND uuid IS NOT DISTINCT FROM %(uuid)s)
    RETURNING id
)
SELECT EXISTS (SELECT FROM written) AS written, EXISTS (SELECT FROM let_go) AS let_go,
       i.status, i.uuid, i.locked_by
FROM (VALUES (true)) AS asked (x) LEFT JOIN images AS i ON i.id = %(id)s

-- Give a row back: its task cannot go on (API busy, credentials refused, a database
-- error, an internal error). `uncount` gives the claim's attempt back; `count` counts a
-- follow's failure as an attempt. A ReadyToGenerate row waits `delay` in not_before; a
-- Generate row waits it in locked_until, owned by nobody.
-- name: release
WITH written AS (
    UPDATE images
    SET locked_by = NULL,
        locked_until = CASE WHEN status = 'Generate' AND %(delay)s::float8 > 0
                            THEN now() + make_interval(secs => %(delay)s::float8) END,
        attempts = greatest(attempts - CASE WHEN %(uncount)s THEN 1 ELSE 0 END
                            + CASE WHEN %(count)s AND status = 'Generate' THEN 1 ELSE 0 END, 0),
        not_before = CASE WHEN status = 'ReadyToGenerate'
                          THEN now() + make_interval(secs => %(delay)s::float8) ELSE not_before END,
        last_error = coalesce(%(error)s, last_error)
    WHERE id = %(id)s AND locked_by = %(worker)s AND status = %(status)s
    RETURNING id
),
let_go AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = %(id)s AND locked_by = %(worker)s AND NOT EXISTS (SELECT FROM written)
    RETURNING id
)
SELECT EXISTS (SELECT FROM written) AS written, EXISTS (SELECT FROM let_go) AS let_go,
       i.status, i.uuid, i.locked_by
FROM (VALUES (true)) AS asked (x) LEFT JOIN images AS i ON i.id = %(id)s

-- A transient failure: the attempt counts, the reason is kept, the row waits. A run
-- whose outcome is unknown is counted: it may have been paid for.
-- name: retry_later
WITH written AS (
    UPDATE images
    SET locked_by = NULL, locked_until = NULL, last_error = %(error)s,
        not_before = now() + make_interval(secs => %(delay)s::float8),
        unknown_outcomes = unknown_outcomes + CASE WHEN %(unknown)s THEN 1 ELSE 0 END
    WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'ReadyToGenerate'
    RETURNING id
),
let_go AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = %(id)s AND locked_by = %(worker)s AND NOT EXISTS (SELECT FROM written)
    RETURNING id
)
SELECT EXISTS (SELECT FROM written) AS written, EXISTS (SELECT FROM let_go) AS let_go,
       i.status, i.uuid, i.locked_by
FROM (VALUES (true)) AS asked (x) LEFT JOIN images AS i ON i.id = %(id)s

-- name: fail
WITH written AS (
    UPDATE images
    SET status = 'Failed', last_error = %(error)s, censored = %(censored)s,
        locked_by = NULL, locked_until = NULL, generation_finished_at = now()
    WHERE id = %(id)s AND locked_by = %(worker)s AND status = %(from_status)s
    RETURNING id
),
let_go AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = %(id)s AND locked_by = %(worker)s AND NOT EXISTS (SELECT FROM written)
    RETURNING id
)
SELECT EXISTS (SELECT FROM written) AS written, EXISTS (SELECT FROM let_go) AS let_go,
       i.status, i.uuid, i.locked_by
FROM (VALUES (true)) AS asked (x) LEFT JOIN images AS i ON i.id = %(id)s

-- The result, handed out once by the API, in one transaction with the status; with what
-- the validation found it to be (media type, size in pixels).
-- name: finalise
WITH written AS (
    UPDATE images
    SET status = 'ReadyToPublish', base64 = %(base64)s, uuid = %(uuid)s, last_error = NULL,
        image_type = %(image_type)s, image_width = %(image_width)s,
        image_height = %(image_height)s,
        censored = false, locked_by = NULL, locked_until = NULL, generation_finished_at = now()
    WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'Generate'
    RETURNING id
),
let_go AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = %(id)s AND locked_by = %(worker)s AND NOT EXISTS (SELECT FROM written)
    RETURNING id
)
SELECT EXISTS (SELECT FROM written) AS written, EXISTS (SELECT FROM let_go) AS let_go,
       i.status, i.uuid, i.locked_by
FROM (VALUES (true)) AS asked (x) LEFT JOIN images AS i ON i.id = %(id)s

-- Lease renewal for exactly the rows owned by live tasks, each in the status its task
-- expects. Rows locked by someone else right now (an operator's SELECT ... FOR UPDATE)
-- are skipped, so renewal never waits behind a lock. Rows that moved under us come back
-- as lost: another owner took them, or an operator changed their status, in which case
-- our lease on them is dropped here, whatever the status (in ours the row is work again
-- and the wake-up trigger fires; in a status of another application nothing of ours is
-- left on it). Touches the lease only: not a change of the row (updated_at stays).
-- name: renew
WITH mine AS (
    SELECT o.id, o.status FROM unnest(%(ids)s::bigint[], %(statuses)s::text[]) AS o (id, status)
),
lockable AS (
    -- a submitting task's own move (ReadyToGenerate -> Generate) may land meanwhile
    SELECT i.id,
           (i.status = mine.status
            OR (mine.status = 'ReadyToGenerate' AND i.status = 'Generate')) AS same
    FROM images AS i JOIN mine ON mine.id = i.id
    WHERE i.locked_by = %(worker)s
    FOR UPDATE OF i SKIP LOCKED
),
renewed AS (
    UPDATE images AS i SET locked_until = now() + make_interval(secs => %(lease)s::float8)
    FROM lockable WHERE i.id = lockable.id AND lockable.same
    RETURNING i.id
),
moved AS (
    UPDATE images AS i SET locked_by = NULL, locked_until = NULL
    FROM lockable WHERE i.id = lockable.id AND NOT lockable.same
    RETURNING i.id
)
SELECT mine.id, renewed.id IS NOT NULL AS renewed,
       (moved.id IS NOT NULL OR i.id IS NULL OR i.locked_by IS DISTINCT FROM %(worker)s
        OR i.status NOT IN ('ReadyToGenerate', 'Generate')) AS lost
FROM mine
LEFT JOIN renewed ON renewed.id = mine.id
LEFT JOIN moved ON moved.id = mine.id
LEFT JOIN images AS i ON i.id = mine.id

-- Rows whose tasks ended without settling them (shutdown, a database that was down):
-- back to the queue, at once, so other listeners (or the next start) resume them. The
-- rows in `unknown` had a paid call cut off at a stop (a second signal, or its own
-- deadline): it may have been accepted and paid for, so it counts towards UNKNOWN_OUTCOME_RESENDS. Two disjoint
-- UPDATEs, so that only a counted row's updated_at moves.
-- name: release_rows
WITH counted AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL,
        unknown_outcomes = unknown_outcomes + 1
    WHERE id = ANY (%(ids)s::bigint[]) AND id = ANY (%(unknown)s::bigint[])
      AND locked_by = %(worker)s AND status IN ('ReadyToGenerate', 'Generate')
    RETURNING id
),
plain AS (
    UPDATE images SET locked_by = NULL, locked_until = NULL
    WHERE id = ANY (%(ids)s::bigint[]) AND id <> ALL (%(unknown)s::bigint[])
      AND locked_by = %(worker)s AND status IN ('ReadyToGenerate', 'Generate')
    RETURNING id
)
SELECT (SELECT count(*) FROM counted) + (SELECT count(*) FROM plain) AS released

-- ---------------------------------------------------------------------------------------
-- The shared concurrency budget (0021_flow_control.sql, docs/flow-control.md).

-- A listener starting: the account's row. An explicit PROVIDER_CONCURRENCY sets the limit
-- (and undoes an operator's change); the provider's default only fills a missing row.
-- name: limits_register
INSERT INTO listener_limits AS l (account, provider, configured, effective, reason, set_by)
VALUES (%(account)s, %(provider)s, %(limit)s, %(limit)s, 'configured', 'setting')
ON CONFLICT (account) DO UPDATE
SET configured = EXCLUDED.configured, effective = EXCLUDED.effective, ceiling = NULL,
    reason = 'configured', set_by = 'setting', changed_at = now()
WHERE %(explicit)s
  AND (l.configured <> EXCLUDED.configured OR l.set_by <> 'setting'
       OR l.effective <> EXCLUDED.configured)

-- name: slots_fill
INSERT INTO listener_slots (account, slot)
SELECT %(account)s, g::integer
FROM generate_series(0, (SELECT configured FROM listener_limits WHERE account = %(account)s) - 1) AS g
ON CONFLICT DO NOTHING

-- The account's limit as it is now, and how many of its slots are held by generations
-- that nobody follows (their listener died; nothing notifies of those): adopt them.
-- name: limits_read
SELECT l.configured, l.effective, l.ceiling, l.reason, l.set_by,
       (SELECT count(*)::integer FROM listener_slots AS s JOIN images AS i ON i.id = s.image_id
         WHERE s.account = l.account AND s.held_until < now() AND i.status = 'Generate'
           AND (i.locked_until IS NULL OR i.locked_until < now())) AS orphaned,
       coalesce(l.wanted_at > now() - interval '1 second'
                AND l.wanted_by IS DISTINCT FROM %(worker)s, false) AS others_want
FROM listener_limits AS l WHERE l.account = %(account)s

-- A listener found no free slot: the others give theirs back to the table as they free,
-- instead of keeping them for their own next claim, for a second.
-- name: limits_want
UPDATE listener_limits SET wanted_by = %(worker)s, wanted_at = now()
WHERE account = %(account)s

-- Take up to `n` free slots below the effective limit, on their own: the listener takes
-- its slots in the claim's statement (claim_ready's `free`, the same rule); this is what
-- bench/slot_strategies.py measures. Free: no live lease on it, and the row it was taken
-- for is not generating (a holder that died leaves its generation's slot taken until the
-- generation ends). SKIP LOCKED: listeners never wait for each other.
-- name: slots_take
UPDATE listener_slots AS s
SET holder = %(worker)s, held_until = now() + make_interval(secs => %(lease)s::float8),
    image_id = NULL
FROM (
    SELECT f.slot FROM listener_slots AS f
    WHERE f.account = %(account)s
      AND f.slot < (SELECT effective FROM listener_limits WHERE account = %(account)s)
      AND (f.holder IS NULL OR f.held_until < now())
      AND NOT EXISTS (
          SELECT 1 FROM images AS i WHERE i.id = f.image_id AND i.status = 'Generate')
    ORDER BY f.slot
    LIMIT %(n)s
    FOR UPDATE OF f SKIP LOCKED
) AS free
WHERE s.account = %(account)s AND s.slot = free.slot
RETURNING s.slot

-- A generation adopted from a listener that stopped or died: its slot is ours now.
-- name: slots_inherit
UPDATE listener_slots AS s
SET holder = %(worker)s, held_until = now() + make_interval(secs => %(lease)s::float8)
WHERE s.account = %(account)s AND s.image_id = %(id)s
  AND (s.holder IS NULL OR s.held_until < now() OR s.holder = %(worker)s)
RETURNING s.slot

-- image_id stays: a generation that goes on without us (handed to the processors, or
-- left at shutdown) keeps its slot taken until it ends (see claim_ready's `free`).
-- name: slots_release
UPDATE listener_slots SET holder = NULL, held_until = NULL
WHERE account = %(account)s AND slot = ANY(%(slots)s::integer[]) AND holder = %(worker)s

-- The heartbeat: every slot this process holds lives on.
-- name: slots_renew
UPDATE listener_slots SET held_until = now() + make_interval(secs => %(lease)s::float8)
WHERE holder = %(worker)s AND account = %(account)s

-- Adapting: a refusal lowers the effective value (once per burst: not again within
-- `cooldown` seconds of the last change); successes raise it one at a time.
-- name: limits_lower
UPDATE listener_limits
SET effective = greatest(1, least(effective, %(value)s)), ceiling = effective,
    reason = %(reason)s, changed_at = now()
WHERE account = %(account)s AND effective > greatest(1, %(value)s)
  AND changed_at < now() - make_interval(secs => %(cooldown)s::float8)
RETURNING effective

-- name: limits_raise
UPDATE listener_limits
SET effective = least(configured, effective + 1), reason = %(reason)s, changed_at = now()
WHERE account = %(account)s AND effective = %(from)s AND effective < configured
RETURNING effective

-- Refused with one at a time: a storm, not the account's limit.
-- name: limits_forget_ceiling
UPDATE listener_limits SET ceiling = NULL WHERE account = %(account)s AND ceiling IS NOT NULL
