"""/healthz and /readyz: what an orchestrator asks, answered with reasons.

healthz: the process answers and its database is reachable (a `SELECT 1` on one of the
listener's own pooled connections, bounded by CHECK_TIMEOUT).
readyz: healthy, and the schema is migrated to this release, wake-ups work (LISTEN
connected, or polling because a pooler cannot deliver them, or -cron's schedule), the
provider accepts the key, and the service is not stopping.

Each answer is computed at most every CACHE seconds, so probes cannot load the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool
import trio

from listener.db import Database, translate
from listener.errors import ListenerError
from listener.migrate import check_migrated

CHECK_TIMEOUT = 3.0
CACHE = 1.0


@dataclass
class Verdict:
    ok: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = {"ok": ok, "detail": detail}
        self.ok = self.ok and ok

    def body(self, what: str) -> dict[str, Any]:
        return {"status": what if self.ok else f"not {what}", "checks": self.checks}


class Health:
    """Reads the service's state; `engine` and `stream` are set once they exist."""

    def __init__(self, db: Database, *, mode: str) -> None:
        self.db = db
        self.mode = mode
        self.engine: Any = None
        self.stream: Any = None  # listener.notify.ListenStream, event mode only
        self._db_checked: tuple[float, Verdict] | None = None

    async def _database(self) -> Verdict:
        if self._db_checked and time.monotonic() - self._db_checked[0] < CACHE:
            return self._db_checked[1]
        verdict = Verdict(True)

        def probe() -> None:
            with self.db.pool.connection(timeout=CHECK_TIMEOUT) as conn:
                conn.execute("SELECT 1")
                check_migrated(conn)

        try:
            with trio.fail_after(CHECK_TIMEOUT + 1):
                await trio.to_thread.run_sync(
                    probe, limiter=self.db.routine, abandon_on_cancel=True
                )
        except trio.TooSlowError:
            verdict.add("database", False, f"no answer within {CHECK_TIMEOUT:g}s")
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            verdict.add("database", False, translate(exc).message)
        except ListenerError as exc:  # reachable, but not migrated for this release
            verdict.add("database", True, "reachable")
            verdict.add("migrations", False, exc.message)
        else:
            verdict.add("database", True, "reachable")
            verdict.add("migrations", True, "current")
        self._db_checked = (time.monotonic(), verdict)
        return verdict

    async def healthz(self) -> Verdict:
        db = await self._database()
        verdict = Verdict(True)
        verdict.add("process", True, "up")
        verdict.add("database", db.checks["database"]["ok"], db.checks["database"]["detail"])
        return verdict

    async def readyz(self) -> Verdict:
        db = await self._database()
        verdict = Verdict(True)
        for name, check in db.checks.items():
            verdict.add(name, check["ok"], check["detail"])
        verdict.add(*self._wakeups())
        verdict.add(*self._provider())
        engine = self.engine
        if engine is None:
            verdict.add("engine", False, "starting")
        elif engine.stop_reason is not None:
            verdict.add("engine", False, f"stopping ({engine.stop_reason})")
        else:
            verdict.add("engine", True, "running")
        return verdict

    def _wakeups(self) -> tuple[str, bool, str]:
        if self.mode != "event":
            return "wakeups", True, f"{self.mode}: the sweeps are the schedule"
        stream = self.stream
        if stream is None:
            return "wakeups", False, "LISTEN not started"
        if stream.backend_pid is None:
            return "wakeups", False, "LISTEN connection down (reconnecting)"
        if stream.mode == "poll":
            return "wakeups", True, "polling every POLL_INTERVAL (LISTEN cannot hear here)"
        return "wakeups", True, "listening"

    def _provider(self) -> tuple[str, bool, str]:
        engine = self.engine
        if engine is None:
            return "provider", False, "starting"
        name = getattr(engine.provider, "name", "provider")
        if not engine.health.credentials_ok.is_set():
            return "provider", False, f"{name} refuses the key (generation paused)"
        if getattr(engine.health, "quota", None) is not None:  # restarting would not help
            return "provider", True, f"{name}: paid quota used up, generation paused"
        if not engine.health.may_generate():
            return "provider", True, f"{name} busy: generation paused for a while"
        return "provider", True, f"{name} accepts the key"
