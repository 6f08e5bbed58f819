"""What every command does first: settings, logging, the database's address."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from listener.config import Settings, describe_conninfo, load_settings
from listener.embedded import psql_target, start_embedded
from listener.logs import setup_logging
from listener.sanitize import register_secrets

if TYPE_CHECKING:
    from listener.providers.registry import Choice

log = logging.getLogger("listener")


@dataclass(frozen=True)
class Context:
    settings: Settings
    conninfo: str
    embedded: bool
    provider: Choice | None = None  # the image provider, for commands that talk to it


def placeholder_note(settings: Settings, provider: Choice | None = None) -> str:
    """What the .env.example placeholders found in the configuration mean here."""
    names = settings.placeholders_ignored
    provider_names = getattr(provider.settings, "placeholders_ignored", ()) if provider else ()
    names = (*provider_names, *names)
    meaning = []
    if provider is not None and provider_names and not provider.configured:
        meaning.append("no API key (`make run`, i.e. --with-emulator, uses the built-in emulator)")
    if not settings.database_configured and "DB_NAME" in names:
        meaning.append("no database (the embedded PostgreSQL is used)")
    return (
        f"{', '.join(names)} hold the .env.example placeholders and count as not set"
        + (f": {'; '.join(meaning)}" if meaning else "")
        + ". Put real values in .env to use the real API and your own database"
    )


def provider_secrets(settings: Settings, provider: Choice) -> list[str]:
    """The provider's secrets, less what log lines show anyway (its API's host)."""
    shown = [*settings.shown_identifiers(), *provider.spec.shown_hosts(provider.settings)]
    found = provider.spec.secrets(provider.settings)
    return [s for s in found if s and not any(s in value for value in shown)]


def prepare(
    args: argparse.Namespace, *, announce_db: bool = True, provider: bool = True
) -> Context:
    """Load and validate settings (the chosen provider's too: every command refuses a
    bad configuration, naming the variable, and masks every secret), set up logging,
    find or start the database."""
    from listener.providers.registry import choose

    settings = load_settings()
    chosen = choose(settings.image_provider) if provider else None
    secrets = settings.secrets() + (provider_secrets(settings, chosen) if chosen else [])
    register_secrets(secrets)
    setup_logging(verbose=bool(getattr(args, "verbose", False)), secrets=secrets)
    if settings.placeholders_ignored or (
        chosen is not None and getattr(chosen.settings, "placeholders_ignored", ())
    ):
        log.warning("%s", placeholder_note(settings, chosen))
    if settings.database_configured:
        conninfo = settings.conninfo()
        if announce_db:
            log.info("Database: %s", describe_conninfo(conninfo))
        return Context(settings, conninfo, embedded=False, provider=chosen)
    conninfo = start_embedded(settings.data_dir)
    if announce_db:
        log.info(
            "No database configured (DB_HOST / DATABASE_URL): using the embedded PostgreSQL "
            "in %s; it keeps running after the listener stops (stop it with: listener "
            "embedded stop); connect with: %s",
            settings.data_dir / "pg",
            psql_target(conninfo),
        )
    return Context(settings, conninfo, embedded=True, provider=chosen)
