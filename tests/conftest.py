"""Shared fixtures: a real PostgreSQL (tests/fixtures/database.py) and the API emulator
(tests/fixtures/emulator.py)."""

from tests.fixtures.cluster import *  # noqa: F403
from tests.fixtures.database import *  # noqa: F403
from tests.fixtures.emulator import *  # noqa: F403
from tests.fixtures.gigachat import *  # noqa: F403
from tests.fixtures.listener import *  # noqa: F403
from tests.fixtures.roles import *  # noqa: F403
