"""What every command does first: settings, logging, the database's address."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from listener.config import Settings, describe_conninfo, load_settings
from listener.embedded import psql_command, start_embedded
from listener.logs import setup_logging
from listener.sanitize import register_secrets

log = logging.getLogger("listener")


@dataclass(frozen=True)
class Context:
    settings: Settings
    conninfo: str
    embedded: bool


def prepare(args: argparse.Namespace, *, announce_db: bool = True) -> Context:
    """Load and validate settings, set up logging, find or start the database."""
    settings = load_settings()
    register_secrets(settings.secrets())
    setup_logging(verbose=bool(getattr(args, "verbose", False)), secrets=settings.secrets())
    if settings.database_configured:
        conninfo = settings.conninfo()
        if announce_db:
            log.info("Database: %s", describe_conninfo(conninfo))
        return Context(settings, conninfo, embedded=False)
    conninfo = start_embedded(settings.data_dir)
    if announce_db:
        log.info(
            "No database configured (DB_HOST / DATABASE_URL): using the embedded PostgreSQL "
            "in %s; connect with: %s",
            settings.data_dir / "pg",
            psql_command(conninfo),
        )
    return Context(settings, conninfo, embedded=True)
