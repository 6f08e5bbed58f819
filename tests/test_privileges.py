"""Least privilege in the database (issue 14): functions that cannot be hijacked, and
three roles that can do their job and nothing else. Every check connects as a login role
of the test's own that holds only the role under test."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.listener import rows, wait_until

INTERNAL_COLUMNS = {
    "id": "1000",
    "uuid": "'u-1'",
    "base64": "'aGk='",
    "attempts": "0",
    "last_error": "'x'",
    "not_before": "'infinity'",
    "locked_by": "'h:1:ab'",
    "locked_until": "'infinity'",
    "censored": "false",
    "generated_by": "'h:1:ab'",
    "generation_started_at": "now()",
    "generation_finished_at": "now()",
    "created_at": "now()",
    "updated_at": "now()",
}


def one(url: str, query, params=None):
    result = rows(url, query, params)
    return result[0][0] if result else None


def failed_row(admin: str) -> int:
    return one(
        admin,
        "INSERT INTO images (prompt, status, last_error, attempts) "
        "VALUES ('x', 'Failed', 'boom', 3) RETURNING id",
    )


def status(admin: str, image_id: int) -> str:
    return one(admin, "SELECT status FROM images WHERE id = %s", (image_id,))


# -- the functions ---------------------------------------------------------------------


def test_every_function_has_a_fixed_search_path_and_no_public_execute(conn):
    """Every function in the migrations' schema, whatever migration made it: pg_catalog
    first, then the schema; a SECURITY DEFINER one also names pg_temp, last (otherwise
    the caller's temporary tables come first)."""
    found = conn.execute(
        """
        SELECT p.oid::regprocedure::text, p.proconfig, p.proacl::text, p.prosecdef
        FROM pg_proc AS p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                          WHERE d.objid = p.oid AND d.deptype = 'e')
        """
    ).fetchall()
    assert len(found) >= 9
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    fixed = f"search_path=pg_catalog, {schema}"
    for name, config, acl, definer in found:
        paths = [c for c in config or [] if c.startswith("search_path=")]
        assert paths in ([fixed], [f"{fixed}, pg_temp"]), (name, config)
        if definer:
            assert paths == [f"{fixed}, pg_temp"], (name, config)
        # NULL acl means the default, EXECUTE for PUBLIC; '=X/' is a grant to PUBLIC
        assert acl is not None and "{=X/" not in acl and ",=X/" not in acl, (name, acl)


def test_operator_functions_run_as_their_owner(conn):
    definer = dict(
        conn.execute(
            "SELECT proname, prosecdef FROM pg_proc WHERE proname IN "
            "('images_retry', 'images_retry_failed', 'images_cancel', 'images_enqueue')"
        ).fetchall()
    )
    assert definer == {
        "images_retry": True,
        "images_retry_failed": True,
        "images_cancel": True,
        "images_enqueue": False,  # the caller's own INSERT privilege applies
    }


@pytest.mark.parametrize("caller", ["superuser", "operator"])
def test_a_planted_overload_does_not_change_what_images_retry_calls(
    roles_applied, login_as, caller
):
    """The attack of the issue: a role with CREATE on public plants a better match for
    the helper images_retry calls; whoever calls images_retry would have run it."""
    admin = roles_applied
    attacker = login_as()
    rows(admin, "GRANT CREATE ON SCHEMA public TO " + one(attacker, "SELECT current_user"))
    rows(
        attacker,
        """
        CREATE TABLE public.planted_calls (caller text);
        GRANT INSERT ON public.planted_calls TO PUBLIC;
        CREATE FUNCTION public.images_reset_failed(since text, only_id bigint)
        RETURNS SETOF bigint LANGUAGE sql AS
        $$ INSERT INTO public.planted_calls VALUES (current_user) RETURNING 0::bigint $$;
        CREATE FUNCTION public.count(bigint) RETURNS bigint LANGUAGE sql AS
        $$ INSERT INTO public.planted_calls VALUES (current_user) RETURNING 0::bigint $$;
        -- better matches than VARIADIC "any" for what the triggers build and send
        CREATE FUNCTION public.json_build_object(text, integer, text, text) RETURNS json
        LANGUAGE sql AS
        $$ INSERT INTO public.planted_calls VALUES (current_user) RETURNING '{}'::json $$;
        CREATE FUNCTION public.json_build_object(text, bigint, text, text) RETURNS json
        LANGUAGE sql AS
        $$ INSERT INTO public.planted_calls VALUES (current_user) RETURNING '{}'::json $$;
        CREATE FUNCTION public.pg_notify(text, text) RETURNS void LANGUAGE sql AS
        $$ INSERT INTO public.planted_calls VALUES (current_user) $$;
        """,
    )
    image_id = failed_row(admin)
    url = admin if caller == "superuser" else login_as("images_operator")
    assert one(url, "SELECT images_retry(%s)", (image_id,)) == image_id
    assert rows(admin, "SELECT caller FROM public.planted_calls") == []
    assert status(admin, image_id) == "ReadyToGenerate"
    rows(admin, "UPDATE images SET status = 'Failed' WHERE id = %s", (image_id,))
    assert one(url, "SELECT images_retry_failed()") == 1
    # the notification triggers fire as whoever changes a row
    assert one(url, "SELECT images_cancel(%s)", (image_id,)) == image_id
    rows(admin, "INSERT INTO images (prompt) VALUES ('y')")
    assert rows(admin, "SELECT caller FROM public.planted_calls") == []


def test_a_temporary_table_named_images_does_not_redirect_the_operator_functions(
    roles_applied, login_as
):
    admin = roles_applied
    image_id = failed_row(admin)
    with psycopg.connect(login_as("images_operator"), autocommit=True) as c:
        c.execute("CREATE TEMP TABLE images (id bigint, status text)")
        c.execute("INSERT INTO images VALUES (%s, 'ReadyToGenerate')", (image_id,))
        assert c.execute("SELECT images_retry(%s)", (image_id,)).fetchone()[0] == image_id
    assert status(admin, image_id) == "ReadyToGenerate"


def test_retry_of_a_seed_row_without_updated_at_really_resets_it(conn):
    """`listener retry` said yes while the row stayed Failed: `updated_at >= '-infinity'`
    is NULL for a seed row whose updated_at is NULL."""
    image_id = conn.execute(
        "INSERT INTO images (prompt, status, updated_at) VALUES ('x', 'Failed', NULL) RETURNING id"
    ).fetchone()[0]
    assert conn.execute("SELECT images_retry(%s)", (image_id,)).fetchone()[0] == image_id
    assert conn.execute("SELECT status FROM images WHERE id = %s", (image_id,)).fetchone()[0] == (
        "ReadyToGenerate"
    )
    conn.execute(
        "INSERT INTO images (prompt, status, updated_at, created_at) "
        "VALUES ('y', 'Failed', NULL, NULL), ('z', 'Failed', NULL, now())"
    )
    assert conn.execute("SELECT images_retry_failed()").fetchone()[0] == 2
    assert conn.execute("SELECT images_retry_failed(now() - interval '1 hour')").fetchone()[0] == 0


@pytest.mark.parametrize(
    "call",
    ["images_retry(NULL)", "images_cancel(NULL)", "images_retry_failed(NULL)"],
)
def test_operator_functions_refuse_null(conn, call):
    with pytest.raises(errors.NullValueNotAllowed):
        conn.execute(f"SELECT {call}")


# -- images_writer ---------------------------------------------------------------------


def test_writer_enqueues_and_reads_its_rows(roles_applied, login_as):
    admin = roles_applied
    app = login_as("images_writer")
    with psycopg.connect(app, autocommit=True) as c:
        a = c.execute("SELECT images_enqueue('a fox', 'UHD', 512, 512, 'fog')").fetchone()[0]
        b = c.execute(
            "INSERT INTO images (prompt, status) VALUES ('b', 'ReadyToGenerate') RETURNING id"
        ).fetchone()[0]
        d = c.execute(
            "INSERT INTO images (prompt, style, width, height, negative_prompt) "
            "VALUES ('c', 'ANIME', 64, 64, 'x') RETURNING id"
        ).fetchone()[0]
        c.execute("SELECT name FROM image_styles").fetchall()
    rows(admin, "UPDATE images SET status = 'Generate', uuid = 'u' WHERE id = %s", (a,))
    rows(admin, "UPDATE images SET status = 'ReadyToPublish', base64 = 'aGk=' WHERE id = %s", (a,))
    with psycopg.connect(app, autocommit=True) as c:
        got = c.execute(
            "SELECT id, status, base64 FROM images WHERE id IN (%s, %s, %s) ORDER BY id",
            (a, b, d),
        ).fetchall()
    assert got == [(a, "ReadyToPublish", "aGk="), (b, "ReadyToGenerate", None),
                   (d, "ReadyToGenerate", None)]  # fmt: skip


@pytest.mark.parametrize("column", sorted(INTERNAL_COLUMNS))
def test_writer_cannot_insert_an_internal_column(roles_applied, login_as, column):
    app = login_as("images_writer")
    with pytest.raises(errors.InsufficientPrivilege):
        rows(
            app,
            f"INSERT INTO images (prompt, {column}) VALUES ('x', {INTERNAL_COLUMNS[column]})",
        )
    assert one(roles_applied, "SELECT count(*) FROM images") == 0


@pytest.mark.parametrize("column", sorted({*INTERNAL_COLUMNS, "status", "prompt", "style"}))
def test_writer_cannot_update_any_column(roles_applied, login_as, column):
    image_id = one(roles_applied, "SELECT images_enqueue('x')")
    value = INTERNAL_COLUMNS.get(column, "'ReadyToPublish'" if column == "status" else "'y'")
    with pytest.raises(errors.InsufficientPrivilege):
        rows(
            login_as("images_writer"), f"UPDATE images SET {column} = {value} WHERE id = {image_id}"
        )


@pytest.mark.parametrize("value", ["Failed", "Generate", "ReadyToPublish"])
def test_writer_inserts_only_the_queue_status(roles_applied, login_as, value):
    app = login_as("images_writer")
    with pytest.raises((errors.InsufficientPrivilege, errors.CheckViolation)):
        rows(app, "INSERT INTO images (prompt, status) VALUES ('x', %s)", (value,))
    with pytest.raises(errors.InsufficientPrivilege):
        # one bad row in a batch refuses the batch
        rows(app, "INSERT INTO images (prompt, status) VALUES ('a', 'ReadyToGenerate'), "
                  "('b', 'Failed')")  # fmt: skip
    assert one(roles_applied, "SELECT count(*) FROM images") == 0


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM images",
        "SELECT images_retry(1)",
        "SELECT images_retry_failed()",
        "SELECT images_cancel(1)",
        "SELECT count(*) FROM images_reset_failed('-infinity'::timestamptz, NULL::bigint)",
        "INSERT INTO image_styles (name) VALUES ('MINE')",
        "TRUNCATE images",
        "ALTER TABLE images ADD COLUMN x int",
        "CREATE TABLE public.mine (x int)",
    ],
)
def test_writer_cannot_do_anything_else(roles_applied, login_as, statement):
    with pytest.raises(errors.InsufficientPrivilege):
        rows(login_as("images_writer"), statement)


def test_the_table_owner_still_inserts_any_status(conn):
    """Superusers and the owner (make run, the tests, the seed's Go service) are unchanged."""
    conn.execute("INSERT INTO images (prompt, status) VALUES ('x', 'Failed')")


# -- images_operator -------------------------------------------------------------------


def test_operator_retries_cancels_and_reads_the_views(roles_applied, login_as):
    admin = roles_applied
    failed = failed_row(admin)
    waiting = one(admin, "SELECT images_enqueue('w')")
    with psycopg.connect(login_as("images_operator"), autocommit=True) as c:
        assert c.execute("SELECT images_retry(%s)", (failed,)).fetchone()[0] == failed
        assert c.execute("SELECT images_cancel(%s)", (waiting,)).fetchone()[0] == waiting
        assert c.execute("SELECT images_retry_failed()").fetchone()[0] == 1
        for view in ("images_queue", "images_in_flight", "images_recent_failures",
                     "images_listeners"):  # fmt: skip
            c.execute(f"SELECT * FROM {view}").fetchall()
        c.execute("SELECT id, status, base64 FROM images").fetchall()
        enqueued = c.execute("SELECT images_enqueue('by hand')").fetchone()[0]
    assert status(admin, failed) == "ReadyToGenerate"
    assert status(admin, waiting) == "ReadyToGenerate"
    assert status(admin, enqueued) == "ReadyToGenerate"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE images SET status = 'ReadyToGenerate'",
        "UPDATE images SET locked_until = 'infinity'",
        "DELETE FROM images",
        "INSERT INTO images (prompt, locked_until) VALUES ('x', 'infinity')",
        "SELECT count(*) FROM images_reset_failed('-infinity'::timestamptz, NULL::bigint)",
    ],
)
def test_operator_cannot_write_the_table_directly(roles_applied, login_as, statement):
    failed_row(roles_applied)
    with pytest.raises(errors.InsufficientPrivilege):
        rows(login_as("images_operator"), statement)


def test_a_role_without_the_roles_can_do_nothing(roles_applied, login_as):
    image_id = failed_row(roles_applied)
    nobody = login_as()
    for statement in (f"SELECT images_retry({image_id})", "SELECT images_enqueue('x')",
                      "SELECT * FROM images", "SELECT * FROM images_queue"):  # fmt: skip
        with pytest.raises(errors.InsufficientPrivilege):
            rows(nobody, statement)
    assert status(roles_applied, image_id) == "Failed"


# -- images_listener -------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO images (prompt) VALUES ('x')",
        "DELETE FROM images",
        "UPDATE images SET prompt = 'y'",
        "UPDATE images SET width = 64",
        "SELECT images_retry(1)",
        "SELECT images_enqueue('x')",
        "ALTER TABLE images ADD COLUMN x int",
        "DROP TABLE images",
        "INSERT INTO image_styles (name) VALUES ('MINE')",
    ],
)
def test_listener_role_cannot_change_what_it_does_not_own(roles_applied, login_as, statement):
    with pytest.raises(errors.InsufficientPrivilege):
        rows(login_as("images_listener"), statement)


async def test_the_listener_runs_its_data_path_as_images_listener(
    roles_applied, login_as, start_listener, emulator
):
    """The end-to-end test under the role alone: start-up checks, claims, the API's
    outcomes (a transient failure, a refusal, a result), heartbeats, shutdown release."""
    admin = roles_applied
    url = login_as("images_listener")
    assert one(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    emulator.fault("run", "503", 1)
    listener = await start_listener(DATABASE_URL=url, RETRY_MAX_ATTEMPTS="3")
    app = login_as("images_writer")
    ready = one(app, "INSERT INTO images (prompt, status) VALUES ('a fox', 'ReadyToGenerate') "
                     "RETURNING id")  # fmt: skip
    more = [one(app, "SELECT images_enqueue(%s, width => 64, height => 64)", (f"fox {i}",))
            for i in range(3)]  # fmt: skip

    def done():
        got = rows(admin, "SELECT status FROM images WHERE id = ANY(%s)", ([ready, *more],))
        return all(s == "ReadyToPublish" for (s,) in got)

    await wait_until(done, what="every row ReadyToPublish")
    emulator.fault("run", "400", 1)
    refused = one(app, "SELECT images_enqueue('refused')")
    await wait_until(lambda: status(admin, refused) == "Failed", what="the refused row")
    # an operator sees the listener (application_name is readable by every role)
    seen = rows(login_as("images_operator"), "SELECT connected, listening FROM images_listeners")
    assert (True, True) in seen, seen
    # a generation in flight at SIGTERM: its lease is renewed, then released on shutdown
    emulator.configure(generation_time=2)
    held = one(app, "SELECT images_enqueue('slow fox')")
    await wait_until(lambda: status(admin, held) == "Generate", what="the slow row at the API")
    assert await listener.stop() == 0
    assert one(admin, "SELECT locked_by FROM images WHERE id = %s", (held,)) is None
    # ... and resumed by the next start, still under the role
    emulator.configure(generation_time=0)
    again = await start_listener(DATABASE_URL=url, DEFAULT_MAX_ATTEMPTS="400")
    await wait_until(
        lambda: status(admin, held) in ("ReadyToPublish", "Failed"), what="the resumed row"
    )
    assert status(admin, held) == "ReadyToPublish", again.log
    assert await again.stop() == 0
    for log in (listener.log, again.log):
        assert "permission denied" not in log, log
    assert one(admin, "SELECT count(*) FROM images WHERE locked_by IS NOT NULL") == 0
    assert set(emulator.stats()["runs_by_prompt"].values()) == {1}, "never a second run"
