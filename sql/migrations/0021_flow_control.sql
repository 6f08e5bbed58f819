-- Flow control: one concurrency budget per provider account, shared by every listener on
-- this database, and an optional priority per row.
--
-- listener_limits: one row per account. `account` is '<provider>:<fingerprint>', the
-- fingerprint an HMAC-SHA256 of the credentials under a fixed label (never the key).
--   configured   the account's limit: PROVIDER_CONCURRENCY (or the provider's default),
--                or what an operator set with images_set_concurrency
--   effective    what the listeners allow themselves now (<= configured): lowered when the
--                provider answers 429 / busy, raised again after successes
--   reason       why `effective` is what it is, in words
--   ceiling      the effective value at the last refusal: creeping above it is slower
--   wanted_by/at the last listener that found no free slot (see below)
-- listener_slots: the budget itself, `configured` rows per account. A listener takes a
-- free slot before it claims a row and keeps it (its lease renewed with its rows') until
-- the generation is over. A slot is free when nobody's lease on it is live AND the row it
-- was taken for is not in Generate: a generation that outlives a SIGKILLed holder still
-- occupies its slot (the provider is still generating it) until it ends, and whoever
-- adopts the row takes the slot over. Rows, not session advisory locks: they hold behind
-- a transaction-mode pooler and survive the pool's recycling of connections
-- (docs/flow-control.md, "Where the slots live").
-- Grants and the functions' search_path come from listener/objects.py.

CREATE TABLE IF NOT EXISTS listener_limits (
    account     text PRIMARY KEY
                CONSTRAINT account_is_provider_colon_fingerprint
                CHECK (account ~ '^[a-z][a-z0-9_]{0,31}:[0-9a-f]{32}$'),
    provider    text NOT NULL,
    configured  integer NOT NULL
                CONSTRAINT configured_is_between_1_and_1000 CHECK (configured BETWEEN 1 AND 1000),
    effective   integer NOT NULL,
    ceiling     integer,
    reason      text NOT NULL DEFAULT 'configured',
    set_by      text NOT NULL DEFAULT 'setting'
                CONSTRAINT set_by_is_setting_or_operator CHECK (set_by IN ('setting', 'operator')),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    -- the last listener that found no free slot, and when: the others hand their freed
    -- slots to the table instead of keeping them for themselves (fair share)
    wanted_by   text,
    wanted_at   timestamptz,
    CONSTRAINT effective_is_between_1_and_configured CHECK (effective BETWEEN 1 AND configured)
);

CREATE TABLE IF NOT EXISTS listener_slots (
    account    text NOT NULL REFERENCES listener_limits (account) ON DELETE CASCADE,
    slot       integer NOT NULL CONSTRAINT slot_is_not_negative CHECK (slot >= 0),
    holder     text,            -- the listener's worker id (as in images.locked_by)
    held_until timestamptz,     -- the holder's lease, renewed while it lives
    image_id   bigint,          -- the row it was taken for (generation slots)
    PRIMARY KEY (account, slot)
);
CREATE INDEX IF NOT EXISTS listener_slots_holder_idx
    ON listener_slots (holder) WHERE holder IS NOT NULL;
CREATE INDEX IF NOT EXISTS listener_slots_image_idx
    ON listener_slots (image_id) WHERE image_id IS NOT NULL;

-- The limit, changed at run time: `SELECT images_set_concurrency(2);` (the one account)
-- or `SELECT images_set_concurrency(2, 'fusionbrain:0123...');`. Effective at the next
-- slot a listener takes (slots above the new limit are not taken again; generations that
-- hold them finish). Kept until a listener starts with PROVIDER_CONCURRENCY set.
CREATE OR REPLACE FUNCTION images_set_concurrency(concurrency integer, account text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
    target text;
    n integer;
BEGIN
    IF images_set_concurrency.concurrency IS NULL
       OR images_set_concurrency.concurrency NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'images_set_concurrency: concurrency must be between 1 and 1000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF images_set_concurrency.account IS NULL THEN
        SELECT pg_catalog.count(*)::integer, pg_catalog.min(l.account) INTO n, target
        FROM listener_limits AS l;
        IF n <> 1 THEN
            RAISE EXCEPTION 'images_set_concurrency: % accounts are known; name one '
                '(SELECT account FROM listener_limits)', n
                USING ERRCODE = 'no_data_found';
        END IF;
    ELSE
        target := images_set_concurrency.account;
    END IF;
    UPDATE listener_limits AS l
    SET configured = images_set_concurrency.concurrency,
        effective = images_set_concurrency.concurrency,
        ceiling = NULL,
        reason = 'set by operator',
        set_by = 'operator',
        changed_at = pg_catalog.now()
    WHERE l.account = target;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'images_set_concurrency: unknown account % (SELECT account FROM '
            'listener_limits)', target
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO listener_slots (account, slot)
    SELECT target, g::integer
    FROM pg_catalog.generate_series(0, images_set_concurrency.concurrency - 1) AS g
    ON CONFLICT DO NOTHING;
    RETURN target;
END
$$;

-- Priority: higher first, default 0. The claim takes the highest priority first (oldest
-- first within one), and one claim in four takes the oldest due row whatever its
-- priority, so a stream of urgent rows cannot starve the others (docs/flow-control.md).
ALTER TABLE images ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS images_ready_priority_idx
    ON images (priority DESC, not_before, id) WHERE status = 'ReadyToGenerate';
