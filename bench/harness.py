"""Process and database helpers for the benchmarks: databases on the local server, the
emulator, listener and procrastinate worker processes, RSS sampling, statistics.

Everything is synchronous and blocking on purpose: the benchmark client is one plain
Python process that only inserts rows and reads timestamps, while the measured services
run as their own processes, the way a user runs them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / ".work"  # logs and profiles (git-ignored)
# The code measured: listener/ and sql/ copied here at the start of a run, and put first on
# every process's PYTHONPATH, so that edits made while the run goes on do not leak into it.
CODE = WORK / "code"
PYTHON = sys.executable
SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEMPLATE = "bench_template"
CONFIG_PREFIXES = (
    *("FUSION_BRAIN_", "DEFAULT_", "DB_", "DATABASE_URL", "PG", "API_", "MAX_"),
    *("LISTEN_DATABASE_URL", "POLL_INTERVAL", "PROVIDER_"),
)


def db_url(name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(SERVER)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(CODE), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


# -- databases ---------------------------------------------------------------------------------


def _admin(query: sql.Composable) -> None:
    with psycopg.connect(SERVER, autocommit=True) as c:
        c.execute(query)


def drop_db(name: str) -> None:
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def make_template() -> None:
    """A migrated database to copy, migrated by the listener's own `migrate` command."""
    drop_db(TEMPLATE)
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    subprocess.run(
        [PYTHON, "-m", "listener", "migrate"],
        env=clean_env(DATABASE_URL=db_url(TEMPLATE)),
        cwd=WORK,
        check=True,
        capture_output=True,
    )


def fresh_db(name: str, *, migrated: bool = True) -> str:
    """A new database (a copy of the migrated template, or empty); returns its URL."""
    drop_db(name)
    if migrated:
        _admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    else:
        _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return db_url(name)


def scalar(url: str, query: str, params: object = None) -> object:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(query, params).fetchone()
        return row[0] if row else None


def execute(url: str, query: str, params: object = None) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(query, params)


def wait_rows(url: str, query: str, target: int, *, timeout: float, every: float = 0.2) -> int:
    """Poll a count query until it reaches target; returns the last count."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as c:
        while True:
            n = c.execute(query).fetchone()[0]
            if n >= target or time.monotonic() > deadline:
                return n
            time.sleep(every)


class DoneListener:
    """A thread that LISTENs on images_done and stamps each id with time.time() on arrival
    (and counts every notification, whatever its channel's payload)."""

    def __init__(self, url: str, channel: str = "images_done") -> None:
        self.stamps: dict[int, float] = {}
        self.count = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._url, self._channel = url, channel
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as c:
            c.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.ready.set()
            while not self._stop.is_set():
                for n in c.notifies(timeout=0.2):
                    now = time.time()
                    self.count += 1
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self.stamps.setdefault(int(json.loads(n.payload)["id"]), now)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and of its descendants, live ones (from their own
    stat) and ended ones it waited for (its cutime + cstime)."""
    stats: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stats[int(proc.name)] = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0, [pid]
    while todo:
        this = todo.pop()
        total += sum(int(f) for f in stats[this][11:15])  # utime, stime, cutime, cstime
        todo += children.get(this, [])
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(dbname: str) -> list[int]:
    """PostgreSQL server processes working for one database (their title names it:
    "postgres: 15/main: USER DBNAME HOST(PORT) STATE", or an autovacuum worker's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {dbname} " in title:
            pids.append(int(proc.name))
    return pids


def backends_cpu(pids: list[int]) -> dict[int, float]:
    return {pid: cpu for pid in pids if (cpu := cpu_seconds(pid)) is not None}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


class Process:
    """A child process whose stdout+stderr go to a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = WORK / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, cwd=WORK, stdout=self._log, stderr=self._log)
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {text!r} after {timeout}s:\n{self.log}")
            time.sleep(0.02)

    def _status_mb(self, field: str) -> float | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the process's peak resident set size so far."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float | None:
        """VmRSS: the process's resident set size now."""
        return self._status_mb("VmRSS")

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def tree_cpu_seconds(self) -> float | None:
        return tree_cpu_seconds(self.pid)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


EMULATOR_TIMES = ("--generation-time", "0", "--status-time", "0")


class Emulator:
    """`python -m listener emulator --port 0 --generation-time 0 --status-time 0`; with
    `stamped`, bench/stamped_emulator.py instead: the same emulator, a run's `arrived_at`
    taken at the first byte of its request rather than once its headers are parsed."""

    READY = b"Emulator listening on "

    def __init__(self, *, stamped: bool = False) -> None:
        from listener.providers.fusionbrain.emulator import EmulatorControl

        WORK.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(18)  # the control endpoint's, chosen here
        log = "emulator-stamped.log" if stamped else "emulator.log"
        self._err = open(WORK / log, "wb")  # noqa: SIM115 - closed in close()
        command = (
            [PYTHON, str(REPO / "bench" / "stamped_emulator.py"), "--port", "0"]
            if stamped
            else [PYTHON, "-m", "listener", "emulator", "--port", "0", *EMULATOR_TIMES]
        )
        self.proc = subprocess.Popen(
            command,
            env=clean_env(EMULATOR_CONTROL_TOKEN=token),
            cwd=WORK,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(self.READY):
            self.close()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = line.removeprefix(self.READY).decode().strip()
        self.control = EmulatorControl(self.url, token=token, timeout=60)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def tree_cpu_seconds(self) -> float | None:
        return tree_cpu_seconds(self.pid)

    def arrivals(self) -> dict[str, float]:
        """prompt -> time.time() when its (first) run request arrived."""
        out: dict[str, float] = {}
        for run in self.control.stats()["runs"]:
            out.setdefault(run["prompt"], run["arrived_at"])
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "control", None) is not None:
            self.control.close()
        self._err.close()


def start_listener(
    name: str,
    url: str,
    emulator: Emulator,
    size: int = 64,
    *,
    command: list[str] | None = None,
    **knobs: str,
) -> Process:
    """`python -m listener` (or `command`, a wrapper of it) on `url` and the emulator."""
    env = clean_env(
        DATABASE_URL=url,
        FUSION_BRAIN_URL=emulator.url,
        FUSION_BRAIN_API_KEY="bench-api-key-7c41",
        FUSION_BRAIN_SECRET_KEY="bench-secret-key-93ad",  # noqa: S106 - the emulator's, not a secret
        DEFAULT_IMAGE_WIDTH=str(size),
        DEFAULT_IMAGE_HEIGHT=str(size),
        DEFAULT_CHECK_INTERVAL="0.05",
        **knobs,
    )
    return Process(name, command or [PYTHON, "-m", "listener"], env)


@contextlib.contextmanager
def wrapped_listener(name: str, script: str, **knobs: str):
    """A bench tool's wrapped listener (`script --listener`) on a fresh database and its
    own emulator, ready; yields (url, emulator, process), all stopped and dropped after."""
    snapshot_code()
    make_template()
    emu = Emulator()
    url = fresh_db(f"bench_{name}")
    proc = start_listener(
        f"listener-{name}", url, emu, command=[PYTHON, script, "--listener"], **knobs
    )
    try:
        proc.wait_for("Listener ready")
        yield url, emu, proc
    finally:
        proc.stop()
        emu.close()
        drop_db(f"bench_{name}")


def start_procrastinate(
    name: str, url: str, emulator: Emulator, size: int = 64, concurrency: int = 8, **extra: str
) -> Process:
    env = clean_env(
        DATABASE_URL=url,
        FUSION_BRAIN_URL=emulator.url,
        BENCH_IMAGE_SIZE=str(size),
        BENCH_CHECK_INTERVAL="0.05",
        BENCH_CONCURRENCY=str(concurrency),
        **extra,
    )
    return Process(name, [PYTHON, str(REPO / "bench" / "procrastinate_app.py"), "worker"], env)


def start_plain_loop(
    name: str, url: str, emulator: Emulator, size: int = 64, concurrency: int = 8
) -> Process:
    env = clean_env(
        DATABASE_URL=url,
        FUSION_BRAIN_URL=emulator.url,
        BENCH_IMAGE_SIZE=str(size),
        BENCH_CHECK_INTERVAL="0.05",
        BENCH_CONCURRENCY=str(concurrency),
    )
    return Process(name, [PYTHON, str(REPO / "bench" / "plain_loop.py")], env)


# -- statistics and machine --------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): the smallest value with at least p% of the
    values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(values: Iterable[float]) -> dict[str, float]:
    v = [x for x in values if x is not None]
    if not v:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def loadavg() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def machine() -> dict[str, str]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    with psycopg.connect(SERVER, autocommit=True) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]
    import importlib.metadata as md

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": pg,
        "packages": ", ".join(
            f"{p} {ver(p)}" for p in ("psycopg", "trio", "httpx", "procrastinate", "py-spy")
        ),
        "code": code_version(),
    }


def code_fingerprint(root: Path = REPO) -> str:
    """A hash of every file under root's listener/ and sql/."""
    digest = hashlib.sha256()
    for path in sorted([*root.glob("listener/**/*.py"), *root.glob("sql/**/*.sql")]):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_code() -> str:
    """Copy the working tree's listener/ and sql/ to CODE; return its fingerprint."""
    shutil.rmtree(CODE, ignore_errors=True)
    for part in ("listener", "sql"):
        shutil.copytree(REPO / part, CODE / part, ignore=shutil.ignore_patterns("__pycache__"))
    if str(CODE) not in sys.path:
        sys.path.insert(0, str(CODE))  # the client's own imports (queries, EmulatorControl)
    return code_fingerprint(CODE)


def code_version() -> str:
    """The commit, and whether listener/ or sql/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "listener", "sql"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return f"listener/ and sql/ at the start of the run (fingerprint {code_fingerprint(CODE)})"
    state = "with uncommitted changes in listener/ or sql/" if dirty else "clean"
    return (
        f"the working tree's listener/ and sql/ at the start of the run, commit {head or '?'} "
        f"({state}; fingerprint {code_fingerprint(CODE)})"
    )
