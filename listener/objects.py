"""The listener's own database objects: the one list that every fixed search_path,
REVOKE and GRANT is made from.

The schema the listener lives in (usually `public`) holds other applications' work, so
nothing here reaches past this list: never "every function in the schema", never a
naming pattern. `listener migrate` fixes the search_path of the functions listed here and
takes EXECUTE from PUBLIC on them, in the transaction of each migration, and, in a
database where `listener roles` ran (recorded in `listener_roles`), grants the roles
what the list gives them on the objects that exist by then; `listener roles` resets the
roles' rights to exactly the list. tests/test_ours_only.py checks the list against what
the migrations create, so a migration that adds an object without a line here fails the
suite. How to add one: sql/migrations/README.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["table", "view", "sequence", "function"]

ROLES = ("images_writer", "images_operator", "images_listener")

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_SIGNATURE = re.compile(r"^([a-z_][a-z0-9_]*)\(([a-z0-9_ ,]*)\)$")
_PRIVILEGE = re.compile(r"^(SELECT|INSERT|UPDATE|USAGE|EXECUTE)(?: \(([a-z0-9_, ]+)\))?$")

# images: what an application may write, and what the listener may change.
WRITER_COLUMNS = "prompt, status, style, width, height, negative_prompt, provider, priority"
LISTENER_COLUMNS = (
    "status, uuid, base64, last_error, attempts, not_before, locked_by, locked_until, "
    "censored, generated_by, generation_started_at, generation_finished_at, unknown_outcomes, "
    "provider, image_type, image_width, image_height"
)


@dataclass(frozen=True)
class Grant:
    """One privilege, on the whole object or on some columns of a table."""

    privilege: str
    columns: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Grant:
        match = _PRIVILEGE.match(text)
        if not match:
            raise ValueError(f"not a privilege this list knows: {text!r}")
        columns = tuple(c.strip() for c in (match.group(2) or "").split(",") if c.strip())
        return cls(match.group(1), columns)

    def sql(self, columns: tuple[str, ...] | None = None) -> str:
        cols = self.columns if columns is None else columns
        return f"{self.privilege} ({', '.join(cols)})" if cols else self.privilege


@dataclass(frozen=True)
class Obj:
    """A table, view, sequence or function of the listener's, by its name in the
    migrations' schema (a function with its argument types, as PostgreSQL prints a
    regprocedure), and what each role may do with it (nothing when not said)."""

    kind: Kind
    name: str
    writer: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    listener: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pattern = _SIGNATURE if self.kind == "function" else _IDENT
        if not pattern.match(self.name):
            raise ValueError(f"not a {self.kind} name: {self.name!r}")
        for text in (*self.writer, *self.operator, *self.listener):
            Grant.parse(text)

    def grants(self) -> dict[str, tuple[Grant, ...]]:
        """Role -> privileges, for the roles that get any."""
        by_role = zip(ROLES, (self.writer, self.operator, self.listener), strict=True)
        return {role: tuple(map(Grant.parse, texts)) for role, texts in by_role if texts}

    def keyword(self) -> str:
        """What GRANT and REVOKE say before the name ("ON images", "ON FUNCTION f()")."""
        return {"sequence": "SEQUENCE ", "function": "FUNCTION "}.get(self.kind, "")

    def target(self, schema: str | None = None) -> str:
        """The name for a statement: schema-qualified and quoted when a schema is given
        (what the commands run), bare otherwise (what a DBA reads)."""
        if schema is None:
            return self.name
        base, paren, args = self.name.partition("(")
        return f"{quote_ident(schema)}.{quote_ident(base)}{paren}{args}"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


OBJECTS: tuple[Obj, ...] = (
    # -- tables ------------------------------------------------------------------------
    Obj(
        "table",
        "images",
        writer=("SELECT", f"INSERT ({WRITER_COLUMNS})"),
        operator=("SELECT", f"INSERT ({WRITER_COLUMNS})"),
        # SELECT ... FOR UPDATE in the claims needs an UPDATE privilege; updated_at is the
        # trigger's
        listener=("SELECT", f"UPDATE ({LISTENER_COLUMNS})"),
    ),
    Obj("table", "image_styles", writer=("SELECT",), operator=("SELECT",), listener=("SELECT",)),
    Obj("table", "image_statuses", writer=("SELECT",), operator=("SELECT",), listener=("SELECT",)),
    Obj("table", "images_upgrade_report", operator=("SELECT",)),
    Obj("table", "listener_migrations", operator=("SELECT",), listener=("SELECT",)),
    Obj("table", "listener_roles", operator=("SELECT",)),
    Obj("sequence", "images_id_seq", writer=("USAGE",), operator=("USAGE",)),
    # the provider account's shared concurrency budget (0021_flow_control.sql)
    Obj(
        "table",
        "listener_limits",
        operator=("SELECT",),
        listener=("SELECT", "INSERT", "UPDATE"),
    ),
    Obj(
        "table",
        "listener_slots",
        operator=("SELECT",),
        listener=("SELECT", "INSERT", "UPDATE"),
    ),
    # -- views -------------------------------------------------------------------------
    Obj("view", "images_queue", operator=("SELECT",)),
    Obj("view", "images_in_flight", operator=("SELECT",)),
    Obj("view", "images_recent_failures", operator=("SELECT",)),
    Obj("view", "images_listeners", operator=("SELECT",)),
    Obj("view", "images_blocked", operator=("SELECT",)),
    Obj("view", "images_providers", operator=("SELECT",)),
    # -- functions an operator or an application calls ---------------------------------
    Obj(
        "function",
        "images_enqueue(text, text, integer, integer, text)",
        writer=("EXECUTE",),
        operator=("EXECUTE",),
    ),
    Obj("function", "images_retry(bigint)", operator=("EXECUTE",)),
    Obj("function", "images_retry_failed(timestamp with time zone)", operator=("EXECUTE",)),
    Obj("function", "images_cancel(bigint)", operator=("EXECUTE",)),
    Obj("function", "images_regenerate(bigint)", operator=("EXECUTE",)),
    Obj("function", "images_fail_blocked()", operator=("EXECUTE",)),
    Obj("function", "images_prompt_is_blank(text)", operator=("EXECUTE",)),
    Obj("function", "images_requeue(text)", operator=("EXECUTE",)),
    Obj("function", "images_set_concurrency(integer, text)", operator=("EXECUTE",)),
    # the claims read a bounded piece of each prompt through it (0016)
    Obj("function", "images_prompt_head(text, integer)", listener=("EXECUTE",)),
    # -- helpers and trigger functions: nobody but the owner calls them ----------------
    Obj("function", "images_reset_failed(timestamp with time zone, bigint)"),
    Obj("function", "images_touch_updated_at()"),
    Obj("function", "images_wakeup_after_insert()"),
    Obj("function", "images_wakeup_after_update()"),
    Obj("function", "images_announce_done()"),
    Obj("function", "images_insert_only_queued()"),
    Obj("function", "image_statuses_keep_the_listeners()"),
    Obj("function", "images_pin_provider()"),
)


def functions() -> list[Obj]:
    return [o for o in OBJECTS if o.kind == "function"]


def revoke_statements(schema: str | None = None) -> list[str]:
    """Every right of the three roles on every listed object, taken back (column rights
    go with the table's)."""
    roles = ", ".join(ROLES)
    return [f"REVOKE ALL ON {o.keyword()}{o.target(schema)} FROM {roles}" for o in OBJECTS]


def grant_statements(
    schema: str | None = None,
    *,
    roles: tuple[str, ...] = ROLES,
    present: set[tuple[str, str]] | None = None,
    columns: dict[str, set[str]] | None = None,
) -> list[str]:
    """The GRANTs of the list, role by role. `present` limits them to the objects that
    exist, `columns` the column rights to the columns that exist (a migration that runs
    before the one adding a column), for `listener migrate`."""
    out: list[str] = []
    for role in roles:
        for o in OBJECTS:
            if present is not None and (o.kind, o.name) not in present:
                continue
            for grant in o.grants().get(role, ()):
                cols: tuple[str, ...] | None = None
                if grant.columns and columns is not None:
                    have = columns.get(o.name, set())
                    cols = tuple(c for c in grant.columns if c in have)
                    if not cols:
                        continue
                out.append(f"GRANT {grant.sql(cols)} ON {o.keyword()}{o.target(schema)} TO {role}")
    return out
