"""`listener roles` and the operator commands under the roles (issue 14)."""

from __future__ import annotations

import os
import secrets
import threading

import psycopg
import pytest
from psycopg import errors

from listener.commands.roles import ROLES, apply_roles, roles_sql
from listener.migrate import migrate
from tests.fixtures.listener import rows
from tests.helpers import clean_env, run_listener


def one(url: str, query, params=None):
    result = rows(url, query, params)
    return result[0][0] if result else None


# -- listener roles --------------------------------------------------------------------


def test_roles_command_creates_nologin_roles_and_is_rerunnable(database_url, tmp_path):
    env = clean_env(DATABASE_URL=database_url)
    for _ in range(2):
        result = run_listener("roles", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Roles ready: images_writer, images_operator, images_listener" in result.stderr
    got = rows(
        database_url,
        "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls "
        "FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname",
        (list(ROLES),),
    )
    assert got == [(name, False, False, False, False, False) for name in sorted(ROLES)]


def test_roles_warn_when_every_role_may_create_in_the_schema(database_url, tmp_path):
    env = clean_env(DATABASE_URL=database_url)
    result = run_listener("roles", env=env, cwd=tmp_path)
    assert result.returncode == 0 and "REVOKE CREATE" not in result.stderr, result.stderr
    rows(database_url, "GRANT CREATE ON SCHEMA public TO PUBLIC")
    result = run_listener("roles", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in result.stderr


def test_roles_as_a_role_that_may_not_grant_says_who_should(roles_applied, login_as, tmp_path):
    env = clean_env(DATABASE_URL=login_as("images_operator"))
    result = run_listener("roles", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "as the owner of the listener's objects, with CREATEROLE" in result.stderr


def test_roles_sql_is_printed_for_a_dba(tmp_path):
    result = run_listener("roles", "--sql", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == roles_sql()
    assert "GRANT SELECT ON images TO images_listener;" in result.stdout


def test_roles_on_an_unmigrated_database_say_what_to_do(make_database, tmp_path):
    url = make_database(migrated=False)
    result = run_listener("roles", env=clean_env(DATABASE_URL=url), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "run `listener migrate`" in result.stderr.strip().splitlines()[-1]


def test_roles_correct_a_tampered_role_and_stale_grants(roles_applied, login_as):
    admin = roles_applied
    rows(admin, "ALTER ROLE images_writer CREATEDB")
    rows(admin, "GRANT UPDATE ON images TO images_writer")
    rows(admin, "GRANT DELETE ON images TO images_operator")
    apply_roles(admin)
    assert one(admin, "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'images_writer'") is False
    image_id = one(admin, "SELECT images_enqueue('x')")
    with pytest.raises(errors.InsufficientPrivilege):
        rows(
            login_as("images_writer"),
            f"UPDATE images SET locked_until = 'infinity' WHERE id = {image_id}",
        )
    with pytest.raises(errors.InsufficientPrivilege):
        rows(login_as("images_operator"), "DELETE FROM images")


def test_concurrent_roles_runs_all_succeed(make_database):
    """Several DBAs (or test sessions) at once, on one database and on others."""
    urls = [make_database(), make_database()]
    targets = [urls[0], urls[0], urls[1], urls[1]]
    failures: list[BaseException] = []

    def run(url: str) -> None:
        try:
            apply_roles(url)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    for url in urls:
        assert one(url, "SELECT has_function_privilege('images_operator', "
                        "'images_retry(bigint)', 'EXECUTE')")  # fmt: skip


def test_migrations_and_roles_in_a_schema_other_than_public(make_database):
    """The functions' search_path names the schema the migrations ran in."""
    base = make_database(migrated=False)
    rows(base, "CREATE SCHEMA app")
    url = base + " options='-csearch_path=app'"
    migrate(url)
    apply_roles(url)
    config = one(url, "SELECT proconfig FROM pg_proc WHERE proname = 'images_retry'")
    assert config == ["search_path=pg_catalog, app, pg_temp"]
    assert one(base, "SELECT to_regclass('public.images')") is None
    login = f"fbl_app_writer_{os.getpid()}_{secrets.token_hex(2)}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE ROLE {login} LOGIN")
        c.execute(f"GRANT images_writer TO {login}")
    try:
        app = f"{base} user={login}"
        image_id = one(app, "SELECT app.images_enqueue('in app')")
        assert one(url, "SELECT status FROM images WHERE id = %s", (image_id,)) == (
            "ReadyToGenerate"
        )
    finally:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f"DROP OWNED BY {login}")
            c.execute(f"DROP ROLE {login}")


# -- the operator commands under the roles ---------------------------------------------


def test_retry_reports_the_real_outcome_of_a_seed_row(database_url, tmp_path):
    """It printed "back to ReadyToGenerate" while a row without updated_at stayed Failed."""
    image_id = one(
        database_url,
        "INSERT INTO images (prompt, status, updated_at) VALUES ('x', 'Failed', NULL) RETURNING id",
    )
    result = run_listener("retry", str(image_id), env=clean_env(DATABASE_URL=database_url),
                          cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"image {image_id}: back to ReadyToGenerate"
    assert one(database_url, "SELECT status FROM images WHERE id = %s", (image_id,)) == (
        "ReadyToGenerate"
    )


def test_retry_refuses_an_answer_that_is_not_the_row(database_url, tmp_path):
    """A function that answers without doing its job (an old or replaced one) is an
    error, not a success line."""
    image_id = one(database_url, "INSERT INTO images (prompt, status) VALUES ('x', 'Failed') "
                                 "RETURNING id")  # fmt: skip
    rows(database_url, "CREATE OR REPLACE FUNCTION images_retry(id bigint) RETURNS bigint "
                       "LANGUAGE sql AS $$ SELECT NULL::bigint $$")  # fmt: skip
    rows(database_url, "CREATE OR REPLACE FUNCTION images_cancel(id bigint) RETURNS bigint "
                       "LANGUAGE sql AS $$ SELECT 0::bigint $$")  # fmt: skip
    env = clean_env(DATABASE_URL=database_url)
    for command in ("retry", "cancel"):
        result = run_listener(command, str(image_id), env=env, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "instead of" in result.stderr and result.stdout == ""


def test_operator_commands_work_as_images_operator(roles_applied, login_as, tmp_path):
    admin = roles_applied
    env = clean_env(DATABASE_URL=login_as("images_operator"))
    failed = one(admin, "INSERT INTO images (prompt, status) VALUES ('x', 'Failed') RETURNING id")

    def ok(*args: str) -> str:
        result = run_listener(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "permission denied" not in result.stderr
        return result.stdout

    assert ok("retry", str(failed)).strip() == f"image {failed}: back to ReadyToGenerate"
    waiting = int(ok("enqueue", "a lighthouse").strip())
    assert ok("cancel", str(waiting)).strip() == f"image {waiting}: cancelled"
    assert "cancelled by operator" in ok("status")
    assert "cancelled by operator" in ok("status", str(waiting))
    assert ok("retry", "--failed").strip() == "1 failed image(s) back to ReadyToGenerate"


def test_a_writer_cannot_retry_from_the_command_line(roles_applied, login_as, tmp_path):
    failed = one(roles_applied, "INSERT INTO images (prompt, status) VALUES ('x', 'Failed') "
                                "RETURNING id")  # fmt: skip
    env = clean_env(DATABASE_URL=login_as("images_writer"))
    result = run_listener("retry", str(failed), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "permission denied for function images_retry" in result.stderr
    assert "lacks the role for it (images_operator" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert one(roles_applied, "SELECT status FROM images WHERE id = %s", (failed,)) == "Failed"


def test_the_commands_call_our_functions_whatever_is_planted(roles_applied, login_as, tmp_path):
    """The CLI's arguments are cast to the declared types: a Python int travels as int2
    and a str untyped, for which an overload planted in public would be the better match."""
    admin = roles_applied
    attacker = login_as()
    rows(admin, "GRANT CREATE ON SCHEMA public TO " + one(attacker, "SELECT current_user"))
    plant = "INSERT INTO public.planted_calls VALUES (current_user) RETURNING 0::bigint"
    rows(
        attacker,
        f"""
        CREATE TABLE public.planted_calls (caller text);
        GRANT INSERT ON public.planted_calls TO PUBLIC;
        CREATE FUNCTION public.images_enqueue(text, text, smallint, smallint, text)
        RETURNS bigint LANGUAGE sql AS $$ {plant} $$;
        CREATE FUNCTION public.images_enqueue(varchar, varchar, smallint, smallint, varchar)
        RETURNS bigint LANGUAGE sql AS $$ {plant} $$;
        CREATE FUNCTION public.images_retry(smallint) RETURNS bigint LANGUAGE sql AS $$ {plant} $$;
        CREATE FUNCTION public.images_cancel(smallint) RETURNS bigint LANGUAGE sql AS $$ {plant} $$;
        """,
    )
    env = clean_env(DATABASE_URL=login_as("images_operator"))

    def ok(*args: str) -> str:
        result = run_listener(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout.strip()

    image_id = int(ok("enqueue", "a fox", "--width", "512", "--height", "256"))
    assert ok("cancel", str(image_id)) == f"image {image_id}: cancelled"
    assert ok("retry", str(image_id)) == f"image {image_id}: back to ReadyToGenerate"
    assert rows(admin, "SELECT caller FROM public.planted_calls") == []
    assert rows(admin, "SELECT prompt, width, height, status FROM images WHERE id = %s",
                (image_id,)) == [("a fox", 512, 256, "ReadyToGenerate")]  # fmt: skip
