"""What every command does first: settings, logging, the database's address."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from listener.config import Settings, describe_conninfo, load_settings
from listener.embedded import psql_target, start_embedded
from listener.logs import setup_logging
from listener.sanitize import register_secrets

log = logging.getLogger("listener")


@dataclass(frozen=True)
class Context:
    settings: Settings
    conninfo: str
    embedded: bool


def placeholder_note(settings: Settings) -> str:
    """What the .env.example placeholders found in the configuration mean here."""
    names = settings.placeholders_ignored
    meaning = []
    if not settings.api_configured and any(n.startswith("FUSION_BRAIN_") for n in names):
        meaning.append("no API key (`make run`, i.e. --with-emulator, uses the built-in emulator)")
    if not settings.database_configured and "DB_NAME" in names:
        meaning.append("no database (the embedded PostgreSQL is used)")
    return (
        f"{', '.join(names)} hold the .env.example placeholders and count as not set"
        + (f": {'; '.join(meaning)}" if meaning else "")
        + ". Put real values in .env to use the real API and your own database"
    )


def prepare(args: argparse.Namespace, *, announce_db: bool = True) -> Context:
    """Load and validate settings, set up logging, find or start the database."""
    settings = load_settings()
    register_secrets(settings.secrets())
    setup_logging(verbose=bool(getattr(args, "verbose", False)), secrets=settings.secrets())
    if settings.placeholders_ignored:
        log.warning("%s", placeholder_note(settings))
    if settings.database_configured:
        conninfo = settings.conninfo()
        if announce_db:
            log.info("Database: %s", describe_conninfo(conninfo))
        return Context(settings, conninfo, embedded=False)
    conninfo = start_embedded(settings.data_dir)
    if announce_db:
        log.info(
            "No database configured (DB_HOST / DATABASE_URL): using the embedded PostgreSQL "
            "in %s; it keeps running after the listener stops (stop it with: listener "
            "embedded stop); connect with: %s",
            settings.data_dir / "pg",
            psql_target(conninfo),
        )
    return Context(settings, conninfo, embedded=True)
