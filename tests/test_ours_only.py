"""Migrations and grants touch only what is ours (issue 19): the listener's own objects
are one explicit list (listener/objects.py), checked here against what the migrations
create; another application's function, view and table in the same schema keep their
owner, privileges and settings; a database the previous release migrated gets back what
its old loops took from other applications' functions; grants follow `listener roles`,
in the databases where it ran and only there."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from listener import objects
from listener.migrate import _CREATE_TABLE, REVISED, check_migrated, own_objects
from listener.sqlfiles import migrations
from tests.fixtures.listener import rows
from tests.fixtures.roles import url_as
from tests.helpers import clean_env, run_listener
from tests.test_seed_upgrade import SEED_SQL

# The migrations and sql/roles.sql as the previous release shipped them (main before
# this change), to build a database that release migrated.
RELEASED = Path(__file__).parent / "fixtures" / "released"


def one(url: str, query, params=None):
    result = rows(url, query, params)
    return result[0][0] if result else None


def apply_released(url: str, *, with_roles: bool = False) -> None:
    """The previous release's `listener migrate` (each file in its own transaction,
    recorded in it) and, when asked, its `listener roles`."""
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(_CREATE_TABLE)
        for path in sorted((RELEASED / "migrations").glob("*.sql")):
            text = path.read_text(encoding="utf-8")
            with c.transaction():
                c.execute(text.encode())
                c.execute(
                    "INSERT INTO listener_migrations (name, checksum) VALUES (%s, %s)",
                    (path.stem, hashlib.sha256(text.encode()).hexdigest()),
                )
        if with_roles:
            with c.transaction():
                c.execute((RELEASED / "roles.sql").read_text(encoding="utf-8").encode())


def make_roles_exist(url: str) -> None:
    """The three roles exist in the cluster (as after `listener roles` on any database),
    without any right in this one but USAGE on the schema."""
    from listener.sqlfiles import sql_dir

    with psycopg.connect(url) as c:
        c.execute((sql_dir() / "roles.sql").read_text(encoding="utf-8").encode())


@pytest.fixture
def app_roles(make_database) -> Iterator[Callable[[str], tuple[str, str]]]:
    """Factory: another application's two roles in a database: an owner (non-superuser,
    may CREATE in public) and a plain login that uses its objects. Returns their URLs."""
    made: list[tuple[str, str]] = []

    def make(url: str) -> tuple[str, str]:
        tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        owner, user = f"fbl_app_owner_{tag}", f"fbl_app_user_{tag}"
        with psycopg.connect(url, autocommit=True) as c:
            for name in (owner, user):
                c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
                made.append((url, name))
            c.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        return url_as(url, owner), url_as(url, user)

    yield make
    for url, name in reversed(made):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def build_app(owner: str, user: str) -> None:
    """What another application keeps in `public`: functions its login calls through the
    default EXECUTE for PUBLIC (one named like ours, one with a setting of its own), a
    SECURITY DEFINER one it locked down itself, a table and a view."""
    login = one(user, "SELECT current_user")
    rows(
        owner,
        f"""
        CREATE FUNCTION public.app_fn() RETURNS int LANGUAGE sql AS 'SELECT 42';
        CREATE FUNCTION public.images_app_report() RETURNS int LANGUAGE sql
            SET work_mem = '2MB' AS 'SELECT 7';
        CREATE FUNCTION public.app_tuned() RETURNS int LANGUAGE sql
            SET work_mem = '1MB' AS 'SELECT 1';
        CREATE FUNCTION public.app_locked() RETURNS int LANGUAGE sql SECURITY DEFINER
            SET search_path = public, pg_temp AS 'SELECT 2';
        REVOKE ALL ON FUNCTION public.app_locked() FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION public.app_locked() TO {login};
        CREATE TABLE public.app_orders (id int PRIMARY KEY, what text);
        GRANT SELECT, INSERT ON public.app_orders TO {login};
        CREATE VIEW public.app_order_names AS SELECT what FROM public.app_orders;
        GRANT SELECT ON public.app_order_names TO {login};
        """,
    )


APP_CATALOG = """
SELECT 'function', p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text,
       coalesce(p.proacl::text, ''), coalesce(p.proconfig::text, ''), p.prosecdef::text
FROM pg_proc AS p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname ~ '^(app_|images_app_)'
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END, c.relname::text,
       pg_get_userbyid(c.relowner)::text, coalesce(c.relacl::text, ''),
       coalesce(c.reloptions::text, ''), ''
FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace AND c.relname ~ '^app_' AND c.relkind IN ('r', 'v')
ORDER BY 1, 2
"""


def the_app_works(user: str) -> None:
    """As the application's own login, not a superuser."""
    assert one(user, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
    assert one(user, "SELECT public.app_fn()") == 42
    assert one(user, "SELECT public.images_app_report()") == 7
    assert one(user, "SELECT public.app_tuned()") == 1
    assert one(user, "SELECT public.app_locked()") == 2
    key = one(user, "SELECT coalesce(max(id), 0) + 1 FROM public.app_orders")
    rows(user, "INSERT INTO public.app_orders VALUES (%s, 'tea')", (key,))
    assert ("tea",) in rows(user, "SELECT what FROM public.app_order_names")


def here(url: str, login: str) -> str:
    """A login of the login_as fixture (roles are cluster-wide), on another database."""
    return url_as(url, psycopg.conninfo.conninfo_to_dict(login)["user"])


def listener(*args: str, url: str, cwd: Path) -> str:
    result = run_listener(*args, env=clean_env(DATABASE_URL=url), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stderr


# -- the list --------------------------------------------------------------------------


def test_the_list_is_exactly_what_the_migrations_create(conn):
    """A migration that adds a table, view, sequence or function without a line in
    listener/objects.py fails here (and one listed that no migration makes)."""
    found = set(
        conn.execute(
            """
            SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'view'
                                  WHEN 'S' THEN 'sequence' ELSE 'table' END, c.relname::text
            FROM pg_class AS c
            WHERE c.relnamespace = current_schema()::regnamespace
              AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
            UNION ALL
            SELECT 'function', p.oid::regprocedure::text
            FROM pg_proc AS p
            WHERE p.pronamespace = current_schema()::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                              WHERE d.objid = p.oid AND d.deptype = 'e')
            """
        ).fetchall()
    )
    listed = set()
    for o in objects.OBJECTS:
        name = o.name
        if o.kind == "function":  # as PostgreSQL prints it (no blank after a comma)
            name = (
                conn.execute(
                    "SELECT to_regprocedure(quote_ident(current_schema()) || '.' || %s)::text",
                    (o.name,),
                ).fetchone()[0]
                or f"{o.name} (no such function)"
            )
            name = name.removeprefix(conn.execute("SELECT current_schema() || '.'").fetchone()[0])
        listed.add((o.kind, name))
    assert found - listed == set(), "made by a migration, missing from listener/objects.py"
    assert listed - found == set(), "listed in listener/objects.py, made by no migration"


def test_every_listed_function_is_fixed_and_closed(conn):
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    for o in objects.functions():
        config, public = conn.execute(
            "SELECT p.proconfig, EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, "
            "acldefault('f', p.proowner))) AS a WHERE a.grantee = 0) FROM pg_proc AS p "
            "WHERE p.oid = to_regprocedure(%s)",
            (f"{schema}.{o.name}",),
        ).fetchone()
        assert config == [f"search_path=pg_catalog, {schema}, pg_temp"], o.name
        assert public is False, o.name


def test_the_roles_rights_are_the_list(roles_applied):
    """`listener roles` grants what the list says, and the list names every right the
    roles hold on the schema's objects."""
    held = rows(
        roles_applied,
        """
        SELECT r.rolname, c.relname, a.privilege_type
        FROM pg_class AS c, aclexplode(c.relacl) AS a, pg_roles AS r
        WHERE c.relnamespace = current_schema()::regnamespace AND a.grantee = r.oid
          AND r.rolname = ANY(%s)
        UNION ALL
        SELECT r.rolname, p.proname, a.privilege_type
        FROM pg_proc AS p, aclexplode(p.proacl) AS a, pg_roles AS r
        WHERE p.pronamespace = current_schema()::regnamespace AND a.grantee = r.oid
          AND r.rolname = ANY(%s)
        """,
        (list(objects.ROLES), list(objects.ROLES)),
    )
    expected = {
        (role, o.name.split("(")[0], g.privilege)
        for o in objects.OBJECTS
        for role, grants in o.grants().items()
        for g in grants
        if not g.columns
    }
    assert set(held) == expected
    assert one(roles_applied, "SELECT array_agg(role ORDER BY role) FROM listener_roles") == (
        sorted(objects.ROLES)
    )


# -- another application's objects -----------------------------------------------------


@pytest.mark.parametrize("database", ["empty", "seed"])
def test_another_applications_objects_keep_owner_privileges_and_settings(
    make_database, app_roles, tmp_path, database
):
    """A fresh install into a live database (the seed's, or one without the listener's
    table): the other application's function, view and table, and its function named
    like ours, are exactly as they were after `listener migrate`, `listener roles` and
    `listener migrate` again; its login (not a superuser) uses them all."""
    url = make_database(migrated=False)
    if database == "seed":
        rows(url, SEED_SQL)
    owner, user = app_roles(url)
    build_app(owner, user)
    the_app_works(user)
    before = rows(url, APP_CATALOG)
    assert len(before) == 6
    out = listener("migrate", url=url, cwd=tmp_path)
    assert "repaired" not in out and "took back" not in out, out
    listener("roles", url=url, cwd=tmp_path)
    again = listener("migrate", url=url, cwd=tmp_path)
    assert "up to date" in again
    assert rows(url, APP_CATALOG) == before
    the_app_works(user)


def test_a_fresh_migrate_says_what_it_did_and_nothing_it_skipped(make_database, tmp_path):
    url = make_database(migrated=False)
    out = listener("migrate", url=url, cwd=tmp_path)
    assert "skipping" not in out and "NOTICE" not in out, out
    for m in migrations():
        assert f"Applied migration {m.name}: " in out


# -- a database the previous release migrated ------------------------------------------


def test_the_previous_releases_damage_to_other_functions_is_repaired(
    make_database, app_roles, tmp_path
):
    url = make_database(migrated=False)
    owner, user = app_roles(url)
    build_app(owner, user)
    apply_released(url)
    # what the issue saw: the application's login may no longer call its own functions
    for fn in ("app_fn", "images_app_report", "app_tuned"):
        with pytest.raises(errors.InsufficientPrivilege):
            rows(user, f"SELECT public.{fn}()")
    # after the old migration, functions made exactly the way the old loop leaves one
    # (app_hardened by its owner, app_changed closed by a DBA) and one set again by a DBA
    # (app_tuned): each is someone's own decision since, left alone
    rows(
        owner,
        """
        CREATE FUNCTION public.app_changed() RETURNS int LANGUAGE sql AS 'SELECT 3';
        CREATE FUNCTION public.app_hardened() RETURNS int LANGUAGE sql
            SET search_path = pg_catalog, public, pg_temp AS 'SELECT 4';
        REVOKE ALL ON FUNCTION public.app_hardened() FROM PUBLIC;
        """,
    )
    rows(url, "ALTER FUNCTION public.app_tuned() SET search_path = pg_catalog, public, pg_temp")
    rows(url, "REVOKE ALL ON FUNCTION public.app_changed() FROM PUBLIC")
    rows(url, "ALTER FUNCTION public.app_changed() SET search_path = pg_catalog, public, pg_temp")
    rows(url, "VACUUM FREEZE pg_catalog.pg_proc")  # the trace survives freezing
    rows(url, "VACUUM FREEZE listener_migrations")
    kept = ("app_changed()", "app_hardened()", "app_tuned()", "app_locked()")
    untouched = [r for r in rows(url, APP_CATALOG) if r[1] in kept]
    assert len(untouched) == 4

    out = listener("migrate", url=url, cwd=tmp_path)
    assert "changed after it was applied" not in out, out
    assert "Migration 0017_ours_only: NOTICE: repaired function app_fn()" in out
    assert "Migration 0017_ours_only: NOTICE: repaired function images_app_report()" in out
    # a SECURITY DEFINER function is named, never opened
    assert "WARNING: function app_locked() is not the listener's" in out
    for name in ("app_changed", "app_hardened", "app_tuned"):
        assert f"function {name}()" not in out, out
    # each repaired function has PostgreSQL's defaults back: callable by the login
    assert one(user, "SELECT public.app_fn()") == 42
    assert one(user, "SELECT public.images_app_report()") == 7
    assert one(url, "SELECT proconfig FROM pg_proc WHERE oid = 'app_fn()'::regprocedure") is None
    # only the search_path goes: a setting of the application's own stays
    assert one(url, "SELECT proconfig FROM pg_proc "
                    "WHERE oid = 'images_app_report()'::regprocedure") == ["work_mem=2MB"]  # fmt: skip
    assert [r for r in rows(url, APP_CATALOG) if r[1] in kept] == untouched
    assert one(user, "SELECT public.app_locked()") == 2  # its own grant, as before
    with pytest.raises(errors.InsufficientPrivilege):
        rows(user, "SELECT public.app_hardened()")
    # ours stay closed
    assert one(url, "SELECT has_function_privilege('public', 'images_retry(bigint)', "
                    "'EXECUTE')") is False  # fmt: skip


def test_after_the_upgrade_a_least_privilege_setup_keeps_working(make_database, login_as, tmp_path):
    """`listener roles` ran under the previous release: the upgrade records it (from its
    grants on images) and grants the roles their rights on the objects the new
    migrations add."""
    url = make_database(migrated=False)
    make_roles_exist(url)
    apply_released(url, with_roles=True)
    listener("migrate", url=url, cwd=tmp_path)
    assert one(url, "SELECT array_agg(role ORDER BY role) FROM listener_roles") == sorted(
        objects.ROLES
    )
    with psycopg.connect(here(url, login_as("images_operator"))) as c:
        assert c.execute("SELECT count(*) FROM listener_roles").fetchone() == (3,)
        c.execute("SELECT * FROM images_blocked").fetchall()
    with psycopg.connect(here(url, login_as("images_listener"))) as c:
        check_migrated(c)


def test_where_roles_never_ran_the_upgrade_grants_nothing_and_takes_back(make_database, tmp_path):
    """The roles exist (another database of the cluster), `listener roles` never ran
    here: what the old 0013 granted them here is taken back and nothing is granted."""
    url = make_database(migrated=False)
    make_roles_exist(url)
    apply_released(url)
    assert one(url, "SELECT has_table_privilege('images_operator', 'images_blocked', 'SELECT')")
    out = listener("migrate", url=url, cwd=tmp_path)
    assert "took back from images_operator" in out
    assert one(url, "SELECT count(*) FROM listener_roles") == 0
    for role in objects.ROLES:
        granted = rows(
            url,
            "SELECT c.relname FROM pg_class AS c, aclexplode(c.relacl) AS a "
            "WHERE c.relnamespace = 'public'::regnamespace AND a.grantee = %s::regrole",
            (role,),
        )
        assert granted == [], (role, granted)


def test_migrate_grants_the_recorded_roles_what_the_list_adds(roles_applied, database_url):
    """What a new migration's objects get, driven by the list alone: in a database where
    `listener roles` ran, a right missing from a listed object is granted by the step
    `listener migrate` runs after each file; where it did not run, nothing is."""
    rows(roles_applied, "REVOKE SELECT ON images_blocked FROM images_operator")
    rows(roles_applied, "REVOKE EXECUTE ON FUNCTION images_cancel(bigint) FROM images_operator")
    with psycopg.connect(roles_applied) as c:
        own_objects(c)
        c.commit()
    assert one(roles_applied, "SELECT has_table_privilege('images_operator', 'images_blocked', "
                              "'SELECT')")  # fmt: skip
    assert one(roles_applied, "SELECT has_function_privilege('images_operator', "
                              "'images_cancel(bigint)', 'EXECUTE')")  # fmt: skip
    rows(roles_applied, "DELETE FROM listener_roles")
    rows(roles_applied, "REVOKE SELECT ON images_blocked FROM images_operator")
    with psycopg.connect(roles_applied) as c:
        own_objects(c)
        c.commit()
    assert not one(roles_applied, "SELECT has_table_privilege('images_operator', "
                                  "'images_blocked', 'SELECT')")  # fmt: skip


def test_every_edited_migration_names_the_versions_it_replaces():
    """A database migrated by the previous release is not warned about files edited on
    purpose (forward-only: they are never re-run)."""
    current = {m.name: m.checksum for m in migrations()}
    for path in sorted((RELEASED / "migrations").glob("*.sql")):
        old = hashlib.sha256(path.read_bytes()).hexdigest()
        if old != current[path.stem]:
            assert old in REVISED.get(path.stem, ()), path.stem
