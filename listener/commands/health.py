"""`listener status --health`: the running listener's own verdict, for scripts.

Asks the listener's HTTP server (--url, else HTTP_ADDRESS) for /readyz, and /healthz when
not ready, prints their JSON bodies, and exits with a code a script can branch on:

    0  ready            (/readyz 200)
    6  not healthy      (/healthz 503: its database is unreachable)
    7  not ready        (healthy, but /readyz 503: LISTEN down, migrations pending, the
                         provider refuses the key, or stopping)
    1  no answer        (no listener there, or its HTTP server is off)
"""

from __future__ import annotations

import json
import sys

import httpx

from listener.errors import UsageError
from listener.web.settings import is_wildcard, load_http_settings

EXIT_READY = 0
EXIT_NO_ANSWER = 1
EXIT_UNHEALTHY = 6
EXIT_NOT_READY = 7
TIMEOUT = 10.0


def base_url(url: str | None) -> str:
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url {url[:80]!r}: must start with http:// or https://")
        return url.rstrip("/")
    http = load_http_settings()
    if not http.enabled:
        raise UsageError(
            "--health needs the listener's HTTP server: give --url, or set HTTP_ADDRESS "
            "as the listener has it"
        )
    host, port = http.address
    if is_wildcard(host):
        host = "127.0.0.1" if ":" not in host else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def check_health(url: str | None) -> int:
    base = base_url(url)
    http = load_http_settings()
    headers = {"Accept": "application/json"}
    host = http.hosts[0] if http.enabled and http.hosts else None
    if host:
        headers["Host"] = host
    try:
        with httpx.Client(timeout=TIMEOUT, headers=headers, trust_env=False) as client:
            ready = client.get(f"{base}/readyz")
            print(json.dumps({"readyz": _body(ready)}, indent=2))
            if ready.status_code == 200:
                return EXIT_READY
            if ready.status_code != 503:  # not a listener's verdict (a proxy, a refusal)
                return EXIT_NO_ANSWER
            healthy = client.get(f"{base}/healthz")
            print(json.dumps({"healthz": _body(healthy)}, indent=2))
    except httpx.HTTPError as exc:
        print(f"listener: no answer from {base}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if healthy.status_code != 200:
        return EXIT_UNHEALTHY
    return EXIT_NOT_READY


def _body(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return {"status": f"HTTP {response.status_code}", "body": response.text[:200]}
