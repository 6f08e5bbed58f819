"""Taking over a live seed database (issue 13): a table made with the seed's SQL and
filled the way the Go service's users filled it, then `listener migrate` and the
listener, both as processes. No legacy row blocks anyone; each ends where the README
says, with its reason; statuses the listener does not own stay usable downstream."""

from __future__ import annotations

import re

import psycopg
import pytest

from listener.sqlfiles import migrations, queries
from tests.fixtures.listener import rows, wait_until
from tests.helpers import clean_env, run_listener

# The seed README's "Database Setup" script, verbatim.
SEED_SQL = """\
CREATE TABLE IF NOT EXISTS images (
    id SERIAL PRIMARY KEY,
    prompt TEXT NOT NULL,
    uuid TEXT,
    status TEXT NOT NULL DEFAULT 'ReadyToGenerate',
    base64 TEXT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_images_status ON images(status);
CREATE INDEX IF NOT EXISTS idx_images_uuid ON images(uuid);
"""

ORDINARY = 1000
BLANK_PROMPTS = ["", "   ", "\t\n", "\u00a0\u00a0", "\u200b\u200d\ufeff", "\u3000\u2800"]
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="


def seed_insert(conn: psycopg.Connection, prompt: str, status: str, **cols: str) -> int:
    names = ["prompt", "status", *cols]
    marks = ", ".join(["%s"] * len(names))
    sql = f"INSERT INTO images ({', '.join(names)}) VALUES ({marks}) RETURNING id"
    return conn.execute(sql, [prompt, status, *cols.values()]).fetchone()[0]


def build_seed_database(url: str) -> dict[str, list[int]]:
    """The seed's table as its users left it; returns the ids per kind of row."""
    ids: dict[str, list[int]] = {}
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(SEED_SQL)
        # the Go service's users' INSERT, the seed README's
        c.execute(
            "INSERT INTO images (prompt, status) "
            "SELECT 'a beautiful sunset over mountains ' || g, 'ReadyToGenerate' "
            f"FROM generate_series(1, {ORDINARY}) AS g"
        )
        ids["ordinary"] = [r[0] for r in c.execute("SELECT id FROM images ORDER BY id")]
        ids["blank_waiting"] = [seed_insert(c, p, "ReadyToGenerate") for p in BLANK_PROMPTS]
        ids["blank_generate_no_uuid"] = [seed_insert(c, " ", "Generate")]
        ids["lost_generate"] = [seed_insert(c, "never accepted", "Generate")]
        ids["publish_no_image"] = [seed_insert(c, "a cat", "ReadyToPublish")]
        ids["published"] = [seed_insert(c, "a dog", "Published", uuid="u-9", base64=IMAGE)]
        ids["archived_blank"] = [seed_insert(c, "", "Archived")]
        ids["failed_blank"] = [seed_insert(c, "", "Failed")]
        ids["ready"] = [seed_insert(c, "a bird", "ReadyToPublish", uuid="u-1", base64=IMAGE)]
    return ids


def snapshot(url: str, ids: list[int]) -> list[tuple]:
    return rows(
        url,
        "SELECT id, prompt, status, uuid, base64, updated_at "
        "FROM images WHERE id = ANY(%s) ORDER BY id",
        (ids,),
    )


@pytest.mark.slow
async def test_a_seed_table_upgrades_and_every_ordinary_row_is_generated(
    make_database, listener_env, start_listener, emulator, tmp_path
) -> None:
    url = make_database(migrated=False)
    ids = build_seed_database(url)
    untouched = ids["published"] + ids["archived_blank"] + ids["failed_blank"] + ids["ready"]
    before = snapshot(url, untouched)

    migrated = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    out = migrated.stderr
    assert migrated.returncode == 0, out

    # One line per kind, with the count and the ids (the first 20).
    def line(kind: str) -> str:
        found = [ln for ln in out.splitlines() if kind in ln and "legacy rows" in ln]
        assert len(found) == 1, out
        return found[0]

    blank = ids["blank_waiting"] + ids["blank_generate_no_uuid"]
    assert f"{len(blank)} row(s) in ReadyToGenerate with a blank prompt" in line("blank prompt")
    assert f"(ids {', '.join(map(str, sorted(blank)))})" in line("blank prompt")
    assert "WARNING" in line("blank prompt")
    assert f"(ids {ids['publish_no_image'][0]})" in line("ReadyToPublish without an image")
    assert f"(ids {ids['published'][0]})" in line("in status 'Published'")
    assert f"(ids {ids['archived_blank'][0]})" in line("in status 'Archived'")
    assert "SELECT * FROM images_upgrade_report" in out
    # every migration says what it changed
    assert re.search(r"Applied migration 0013_seed_upgrade: added .*table.* image_statuses", out)

    # The same report, later, from psql.
    report = dict(rows(url, "SELECT kind, ids FROM images_upgrade_report"))
    assert sorted(report["in ReadyToGenerate with a blank prompt"]) == sorted(blank)
    assert report["in ReadyToPublish without an image"] == ids["publish_no_image"]

    # A downstream step that worked with the Go service works now: Published was found
    # at upgrade time, so a finished row can be published.
    rows(url, "UPDATE images SET status = 'Published' WHERE id = %s", (ids["ready"][0],))
    untouched.remove(ids["ready"][0])
    before = [r for r in before if r[0] != ids["ready"][0]]

    listener = await start_listener(env={**listener_env, "DATABASE_URL": url})

    def all_done():
        (left,) = rows(
            url,
            "SELECT count(*) FROM images WHERE id = ANY(%s) AND status <> 'ReadyToPublish'",
            (ids["ordinary"] + ids["lost_generate"],),
        )[0]
        return left == 0

    await wait_until(all_done, seconds=240, every=0.5, what="every ordinary row generated")

    # Each legacy row where the README says, with its reason.
    def state(kind: str) -> list[tuple]:
        return rows(
            url,
            "SELECT status, last_error FROM images WHERE id = ANY(%s) ORDER BY id",
            (ids[kind],),
        )

    assert set(state("blank_waiting")) == {("Failed", "blank prompt (found when upgrading)")}
    assert state("blank_generate_no_uuid") == [("Failed", "blank prompt (found when upgrading)")]
    assert state("publish_no_image") == [
        ("Failed", "ReadyToPublish without an image (found when upgrading)")
    ]
    assert state("lost_generate") == [("ReadyToPublish", None)]
    # Rows in statuses the listener does not own, and finished ones, were never touched.
    assert snapshot(url, untouched) == before
    assert rows(url, "SELECT count(*) FROM images WHERE id = ANY(%s) "
                     "AND (locked_by IS NOT NULL OR last_error IS NOT NULL)", (untouched,)) == [(0,)]  # fmt: skip

    # No blank prompt reached the API, and no prompt ran twice.
    stats = emulator.stats()
    assert stats["runs_total"] == ORDINARY + 1
    assert all(n == 1 for n in stats["runs_by_prompt"].values())
    assert all(p.strip() for p in stats["runs_by_prompt"])
    assert "cannot claim" not in listener.log

    # Downstream publishing of a row the listener generated: Published is listed.
    done = ids["ordinary"][0]
    rows(url, "UPDATE images SET status = 'Published' WHERE id = %s", (done,))
    assert rows(url, "SELECT status FROM images WHERE id = %s", (done,)) == [("Published",)]
    assert await listener.stop() == 0


def test_a_status_of_ones_own_takes_one_insert(conn) -> None:
    """On a table that had no Published rows at upgrade time."""
    (image_id,) = conn.execute(
        "INSERT INTO images (prompt, status, uuid, base64) "
        "VALUES ('x', 'ReadyToPublish', 'u', 'AA==') RETURNING id"
    ).fetchone()
    publish = "UPDATE images SET status = 'Published' WHERE id = %s"
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as info:
        conn.execute(publish, (image_id,))
    assert "status_must_be_listed_in_image_statuses" in str(info.value)
    assert 'not present in table "image_statuses"' in str(info.value)
    conn.execute("INSERT INTO image_statuses VALUES ('Published')")
    conn.execute(publish, (image_id,))
    assert conn.execute("SELECT status FROM images WHERE id = %s", (image_id,)).fetchone() == (
        "Published",
    )


def test_the_listeners_own_statuses_cannot_be_removed(conn) -> None:
    for statement in (
        "DELETE FROM image_statuses WHERE name = 'Failed'",
        "UPDATE image_statuses SET name = 'Done' WHERE name = 'ReadyToPublish'",
        "TRUNCATE image_statuses CASCADE",
    ):
        with pytest.raises(psycopg.errors.RestrictViolation) as info:
            conn.execute(statement)
        assert "belongs to the listener" in str(info.value)
    # a user's own status can go again
    conn.execute("INSERT INTO image_statuses VALUES ('Archived')")
    conn.execute("DELETE FROM image_statuses WHERE name = 'Archived'")


def test_the_listener_never_claims_or_moves_rows_in_other_statuses(conn) -> None:
    """Every query of the listener and every operator function filters by status: a
    row in a status it does not own, even with a stale lease, is never claimed,
    renewed, released, retried or cancelled. The one thing the listener does there is
    let go: a write or a renewal that finds a row of its own moved to such a status
    clears its own lease on it (the lease columns only: updated_at stays)."""
    conn.execute("INSERT INTO image_statuses VALUES ('Published'), ('Archived')")
    conn.execute(
        "INSERT INTO images (prompt, status, uuid, base64, locked_by, locked_until, not_before) "
        "VALUES ('p', 'Published', 'u-1', 'AA==', 'w', now() - interval '1 hour', now() - interval '1 day'),"
        "       ('a', 'Archived', NULL, NULL, NULL, NULL, now() - interval '1 day')"
    )
    snapshot = (
        "SELECT (i #- '{locked_by}' #- '{locked_until}')::text"
        " FROM (SELECT to_jsonb(i) AS i FROM images AS i ORDER BY id) AS i"
    )
    before = conn.execute(snapshot).fetchall()
    q = queries()
    params = {"worker": "w", "lease": 30, "limit": 100, "id": 1, "delay": 0, "error": "e",
              "keep": True, "uuid": "u", "censored": False, "from_status": "Generate",
              "base64": "AA==", "uncount": False, "count": True, "unknown": False,
              "held": [], "provider": "fusionbrain", "legacy": "fusionbrain",
              "default_style": "ANIME", "image_type": "png", "image_width": 1,
              "image_height": 1, "account": None, "mine": [], "bind": False}  # fmt: skip
    ids = [i for (i,) in conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
    for name in ("claim_ready", "claim_generating"):
        # claim_ready answers one row even when it takes none (the slots it found)
        taken = [r for r in conn.execute(q[name], params).fetchall() if r[0] is not None]
        assert taken == [], name
    for status in ("ReadyToGenerate", "Generate"):
        renewal = {**params, "ids": ids, "statuses": [status] * len(ids)}
        assert not any(renewed for _, renewed, _ in conn.execute(q["renew"], renewal)), status
    released = conn.execute(q["release_rows"], {**params, "ids": ids, "unknown": ids})
    assert released.fetchone() == (0,)
    for ident in ids:
        params["id"] = ident
        for name in ("record_accepted", "retry_later", "fail", "finalise"):
            assert conn.execute(q[name], params).fetchone()[0] is False, name  # not written
        for status in ("ReadyToGenerate", "Generate"):
            written = conn.execute(q["release"], {**params, "status": status}).fetchone()[0]
            assert written is False
        for fn in ("images_retry", "images_cancel"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                conn.execute(f"SELECT {fn}(%s)", (ident,))
    assert conn.execute("SELECT images_retry_failed()").fetchone() == (0,)
    assert conn.execute(snapshot).fetchall() == before
    # our stale lease on the Published row is gone; nothing else of the rows changed
    assert conn.execute("SELECT count(*) FROM images WHERE locked_by IS NOT NULL").fetchone() == (
        0,
    )
    # and the views leave them out
    (counted,) = conn.execute("SELECT sum(rows) FROM images_queue").fetchone()
    assert counted == 0
    assert conn.execute("SELECT count(*) FROM images_in_flight").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM images_blocked").fetchone() == (0,)


def test_migrate_talks_and_migrating_twice_reports_nothing_new(make_database, tmp_path) -> None:
    url = make_database(migrated=False)
    build_seed_database(url)
    env = clean_env(DATABASE_URL=url)
    first = run_listener("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # every NOTICE and WARNING of every migration is shown, named by its migration
    out = first.stderr
    assert 'Migration 0001_seed_schema: NOTICE: relation "images" already exists' in out
    assert "Migration 0002_row_state: NOTICE: existing rows break constraint" in out
    assert "Migration 0013_seed_upgrade: WARNING: legacy rows: " in out
    # ... and what each changed, rows included (0002 moves a Generate row without a uuid)
    assert re.search(r"Applied migration 0002_row_state: added columns images\.attempts.*"
                     r"rows of images: 2 updated", out)  # fmt: skip
    (reported,) = rows(url, "SELECT count(*) FROM images_upgrade_report")[0]
    again = run_listener("migrate", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stderr
    assert "legacy rows" not in again.stderr
    assert rows(url, "SELECT count(*) FROM images_upgrade_report")[0] == (reported,)
    # every constraint holds for every row now
    assert rows(url, "SELECT count(*) FROM pg_constraint "
                     "WHERE conrelid = 'images'::regclass AND NOT convalidated") == [(0,)]  # fmt: skip


def tamper(conn: psycopg.Connection, constraint: str, update: str, *params) -> None:
    """What an operator does with a constraint in the way: drop it, change the row, put
    it back NOT VALID (old rows are not checked again)."""
    (definition,) = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'images'::regclass AND conname = %s",
        (constraint,),
    ).fetchone()
    conn.execute(f'ALTER TABLE images DROP CONSTRAINT "{constraint}"')
    conn.execute(update, params)
    conn.execute(f'ALTER TABLE images ADD CONSTRAINT "{constraint}" {definition} NOT VALID')


def make_blocked_rows(conn: psycopg.Connection) -> dict[int, str]:
    """One waiting row per rule, each broken behind the constraint's back."""
    ids = [conn.execute("INSERT INTO images (prompt) VALUES (%s) RETURNING id", (f"b{i}",))
           .fetchone()[0] for i in range(5)]  # fmt: skip
    tamper(conn, "prompt_must_not_be_blank",
           "UPDATE images SET prompt = %s WHERE id = %s", "\u00a0\u200b", ids[0])  # fmt: skip
    tamper(conn, "negative_prompt_must_not_be_blank",
           "UPDATE images SET negative_prompt = %s WHERE id = %s", "\ufeff", ids[1])  # fmt: skip
    tamper(conn, "width_must_be_between_64_and_1024",
           "UPDATE images SET width = 5000 WHERE id = %s", ids[2])  # fmt: skip
    tamper(conn, "attempts_must_not_be_negative",
           "UPDATE images SET attempts = -1 WHERE id = %s", ids[3])  # fmt: skip
    tamper(conn, "Generate_needs_a_uuid",
           "UPDATE images SET status = 'Generate' WHERE id = %s", ids[4])  # fmt: skip
    return {
        ids[0]: "blank prompt",
        ids[1]: "blank negative prompt",
        ids[2]: "size 5000xdefault outside 64..1024",
        ids[3]: "negative attempts count",
        ids[4]: "Generate without a uuid",
    }


def test_the_claims_leave_out_a_row_that_breaks_a_rule(conn) -> None:
    """Without the claims' predicates, each of these rows alone fails the whole claim."""
    good = [conn.execute("INSERT INTO images (prompt) VALUES ('ok') RETURNING id").fetchone()[0]
            for _ in range(3)]  # fmt: skip
    blocked = make_blocked_rows(conn)
    q = queries()
    params = {"worker": "w", "lease": 30, "limit": 100, "held": [], "provider": "fusionbrain",
              "legacy": "fusionbrain", "default_style": "ANIME", "account": None, "mine": [],
              "bind": False}  # fmt: skip
    # the check that this test can fail: the fast claim, without the predicates, fails on
    # them (the store then falls back to the checked claim: test_store.py)
    unguarded = re.sub(r"\n\s*-- a row that breaks a rule.*?(?=\n\s*ORDER BY)", "",
                       q["claim_ready_checked"], flags=re.S)  # fmt: skip

    def statement(text: str) -> list[str]:  # its words, without any comment
        return re.sub(r"--[^\n]*", "", text).split()

    assert statement(unguarded) == statement(q["claim_ready"])  # the same claim, unguarded
    # the fair-share claim is the same statement but for its order (oldest first)
    oldest = q["claim_ready_oldest"].replace(
        "ORDER BY not_before, id", "ORDER BY priority DESC, not_before, id"
    )
    assert statement(oldest) == statement(q["claim_ready"])
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(q["claim_ready"], params)
    claimed = [r[0] for r in conn.execute(q["claim_ready_checked"], params)]
    assert sorted(claimed) == good
    assert conn.execute(q["claim_generating"], params).fetchall() == []
    # the claimed rows are held by their tasks: their leases are not a due time
    (at, _now) = conn.execute(q["next_ready_at"], {**params, "held": good}).fetchone()
    assert at is None  # a blocked row never looks due
    listed = dict(conn.execute("SELECT id, reason FROM images_blocked").fetchall())
    assert listed == blocked


@pytest.mark.slow
async def test_a_row_broken_after_migration_blocks_nobody(
    database_url, start_listener, tmp_path
) -> None:
    with psycopg.connect(database_url, autocommit=True) as c:
        blocked = make_blocked_rows(c)
    listener = await start_listener()
    good = [r[0] for r in rows(
        database_url,
        "INSERT INTO images (prompt) SELECT 'fox ' || g FROM generate_series(1, 50) g "
        "RETURNING id",
    )]  # fmt: skip

    def done():
        return rows(
            database_url,
            "SELECT count(*) = %s FROM images WHERE id = ANY(%s) AND status = 'ReadyToPublish'",
            (len(good), good),
        )[0][0]

    await wait_until(done, seconds=120, every=0.2, what="the good rows generated")
    assert "cannot claim" not in listener.log
    # the blocked rows did not move, and nobody holds them
    assert rows(
        database_url,
        "SELECT count(*) FROM images WHERE id = ANY(%s) AND locked_by IS NULL "
        "AND status IN ('ReadyToGenerate', 'Generate')",
        (list(blocked),),
    ) == [(len(blocked),)]
    # an operator can cancel one (the rules bind waiting rows only) ...
    first = next(iter(blocked))
    result = run_listener("cancel", str(first), env=clean_env(DATABASE_URL=database_url),
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    # ... or fail them all, each with its reason
    failed = dict(rows(database_url, "SELECT id, reason FROM images_fail_blocked()"))
    assert failed == {k: v for k, v in blocked.items() if k != first}
    assert rows(
        database_url,
        "SELECT count(*) FROM images WHERE id = ANY(%s) AND status = 'Failed' "
        "AND last_error LIKE '%% (found at claim time)'",
        (list(failed),),
    ) == [(len(failed),)]
    assert await listener.stop() == 0


def test_rows_from_the_previous_release_that_break_the_new_rules(make_database, tmp_path):
    """A database this listener served before 0013: rows its rules let in (a zero-width
    prompt) or an operator forced in (constraints dropped, triggers off), each made
    valid by the upgrade and reported."""
    from listener.migrate import _CREATE_TABLE

    url = make_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(_CREATE_TABLE)
        for m in migrations():
            if m.name < "0013":
                c.execute(m.sql.encode())
                c.execute("INSERT INTO listener_migrations (name, checksum) VALUES (%s, %s)",
                          (m.name, m.checksum))  # fmt: skip
        c.execute("ALTER TABLE images DROP CONSTRAINT width_must_be_between_64_and_1024, "
                  "DROP CONSTRAINT attempts_must_not_be_negative")  # fmt: skip

        def add(sql: str, *params) -> int:
            return c.execute(sql + " RETURNING id", params).fetchone()[0]

        ids = {
            "zero_width": add("INSERT INTO images (prompt) VALUES (%s)", "\u200b\u200d"),
            "negative": add(
                "INSERT INTO images (prompt, negative_prompt) VALUES ('n', %s)", "\u200b"
            ),
            "width": add("INSERT INTO images (prompt, width) VALUES ('w', 5000)"),
            "attempts": add("INSERT INTO images (prompt, attempts) VALUES ('a', -3)"),
            "empty_image": add(
                "INSERT INTO images (prompt, status, uuid, base64) "
                "VALUES ('e', 'ReadyToPublish', 'u', '')"
            ),
        }
        c.execute("SET session_replication_role = replica")  # the FK's trigger is off
        ids["style"] = add("INSERT INTO images (prompt, style) VALUES ('s', 'GONE')")
        c.execute("RESET session_replication_role")
        blanks = [add("INSERT INTO images (prompt) VALUES (%s)", "\u2060" * (i + 1))
                  for i in range(24)]  # fmt: skip
    result = run_listener("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stderr
    blank = sorted([ids["zero_width"], *blanks])
    assert "25 row(s) in ReadyToGenerate with a blank prompt: " in out
    assert f"(ids {', '.join(map(str, blank[:20]))}, ...)" in out  # the first 20
    report = dict(rows(url, "SELECT kind, ids FROM images_upgrade_report"))
    assert sorted(report["in ReadyToGenerate with a blank prompt"]) == blank  # all of them

    def state(name: str) -> tuple:
        return rows(url, "SELECT status, last_error, negative_prompt, attempts FROM images "
                         "WHERE id = %s", (ids[name],))[0]  # fmt: skip

    assert state("zero_width")[:2] == ("Failed", "blank prompt (found when upgrading)")
    assert state("negative") == ("ReadyToGenerate", None, None, 0)
    assert state("width")[:2] == (
        "Failed",
        "size 5000xdefault outside 64..1024 (found when upgrading)",
    )
    assert state("attempts") == ("ReadyToGenerate", None, None, 0)
    assert state("empty_image")[:2] == (
        "Failed", "ReadyToPublish without an image (found when upgrading)")  # fmt: skip
    assert state("style")[:2] == (
        "Failed", "style GONE is not listed in image_styles (found when upgrading)")  # fmt: skip
    for kind in ("blank negative prompt", "negative attempts count", "outside 64..1024",
                 "style not in image_styles", "ReadyToPublish without an image"):  # fmt: skip
        assert kind in out, kind
    assert rows(url, "SELECT count(*) FROM pg_constraint "
                     "WHERE conrelid = 'images'::regclass AND NOT convalidated") == [(0,)]  # fmt: skip
