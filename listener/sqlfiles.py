"""The SQL that ships with the package: ordered migrations and named queries.

`sql/` sits at the top of the repository and is packed into the wheel as
`listener/_sql`, so an installed listener finds it from any working directory; a source
checkout (or an editable install) reads the top-level folder directly.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import LiteralString, cast

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    packaged = resources.files("listener") / "_sql"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "sql"


@functools.cache
def migrations() -> tuple[Migration, ...]:
    folder = sql_dir() / "migrations"
    # NNNN_name.sql, or NNNNx_name.sql for a second file under one reserved number
    # (0016_a sorts before 0016b_a)
    files = sorted(
        {
            *folder.glob("[0-9][0-9][0-9][0-9]_*.sql"),
            *folder.glob("[0-9][0-9][0-9][0-9][a-z]_*.sql"),
        }
    )
    if not files:
        raise FileNotFoundError(f"no migration files in {folder}")
    return tuple(Migration(f.stem, f.read_text(encoding="utf-8")) for f in files)


def parse_named(text: str) -> dict[str, LiteralString]:
    """Split a file of ``-- name: x`` blocks into {x: sql}."""
    parts = _NAME.split(text)
    named: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in named:
            raise ValueError(f"query {name!r} is defined twice")
        # The files are part of the package, not user input: LiteralString is honest.
        named[name] = cast(LiteralString, body.strip())
    return named


@functools.cache
def named(filename: str) -> dict[str, LiteralString]:
    """The named queries of one file in sql/ (loaded once)."""
    return parse_named((sql_dir() / filename).read_text(encoding="utf-8"))


def queries() -> dict[str, LiteralString]:
    """The service's own queries (sql/queries.sql)."""
    return named("queries.sql")
