"""The engine: claims, runs, follows and releases rows; see `engine.Engine`.

The data path: a wake-up (`claims`) -> a row task (`rows`) that submits it (`runs`)
and follows it (`follow`) while its lease is renewed (`lease`), within one concurrency
budget (`budget`); the sweeps (`sweeps`) are the fallback schedule. The seams are in
`ports`: a `Store` (PostgreSQL, `listener.store`) and a `Provider` (an image API,
`listener.providers`).
"""

from listener.engine.engine import Connected, Engine, Polling, Wakeup

__all__ = ["Connected", "Engine", "Polling", "Wakeup"]
