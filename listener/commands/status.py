"""`listener status [ID]`: the queue at a glance, or one image's details.

Without an id: the images_queue view as a table, the generations in flight, the failures
of the last hour by reason and the listeners seen by the database. With an id: every
column of that row except the image itself (its size is shown instead). Exit 3 when the
id is unknown. With --health: the running listener's /readyz and /healthz, for scripts.
"""

from __future__ import annotations

import argparse

from listener.commands.common import prepare
from listener.errors import NotFound
from listener.operator import EXIT_OK, connect, fetch_all, fetch_one, format_table
from listener.operator import format_value as fmt


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "status",
        parents=[common],
        help="show the queue, or one image's details",
        description="Without ID: rows per status, generations in flight, failures of the "
        "last hour, listeners. With ID: that image's columns (never the image data). "
        "Exit codes: 0 ok, 3 no such image.",
    )
    p.add_argument("id", nargs="?", type=int, help="an image id")
    p.add_argument(
        "--health",
        action="store_true",
        help="ask the running listener's /readyz and /healthz (its HTTP server: --url, "
        "else HTTP_ADDRESS) and print their JSON; exit 0 ready, 6 not healthy (database "
        "unreachable), 7 healthy but not ready, 1 no answer",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="with --health: the listener's HTTP server (default http://HTTP_ADDRESS/)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.health:
        from listener.commands.health import check_health

        return check_health(args.url)
    ctx = prepare(args, announce_db=False)
    with connect(ctx.conninfo, "status") as conn:
        if args.id is not None:
            row = fetch_one(conn, "row_detail", {"id": args.id})
            if row is None:
                raise NotFound(f"image {args.id} does not exist")
            print(render_row(row))
            return EXIT_OK
        queue = fetch_all(conn, "queue")
        in_flight = fetch_one(conn, "in_flight")
        failures = fetch_all(conn, "recent_failures")
        listeners = fetch_all(conn, "listeners")
        providers = fetch_all(conn, "providers")
        waiting = fetch_all(conn, "waiting_reasons")
    print(render_summary(queue, in_flight or {}, failures, listeners, providers, waiting))
    return EXIT_OK


def render_row(row: dict) -> str:
    shown = dict(row)
    if shown["has_image"]:
        shown["has_image"] = f"yes ({shown['image_bytes']} bytes)"
    del shown["image_bytes"]
    width = max(len(k) for k in shown)
    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in shown.items())


def render_summary(
    queue: list,
    in_flight: dict,
    failures: list,
    listeners: list,
    providers: list | None = None,
    waiting: list | None = None,
) -> str:
    out = [
        format_table(
            ["status", "rows", "held", "due", "delayed", "oldest", "last change"],
            [
                [
                    r["status"],
                    r["rows"],
                    r["held"],
                    r["due"],
                    r["delayed"],
                    r["oldest_age"],
                    r["last_change"],
                ]
                for r in queue
            ],
        ),
        "",
    ]
    flying = in_flight.get("rows") or 0
    line = f"in flight: {flying}"
    if flying:
        line += f" (oldest {fmt(in_flight['oldest_age'])}"
        if in_flight["unfollowed"]:
            line += f", {in_flight['unfollowed']} without a live lease"
        line += ")"
    out.append(line)
    if waiting:
        # a retry's reason, or a paused provider's words (its paid quota used up...)
        out.append("waiting for a later try:")
        out.append(
            format_table(
                ["rows", "next try", "reason"],
                [[w["rows"], w["next_try"], w["reason"]] for w in waiting],
            )
        )
    out.append("")
    if failures:
        out.append("failures in the last hour:")
        out.append(
            format_table(
                ["count", "latest", "reason", "latest ids"],
                [[f["failures"], f["latest"], f["reason"], f["latest_ids"]] for f in failures],
            )
        )
    else:
        out.append("failures in the last hour: none")
    out.append("")
    connected = sum(1 for r in listeners if r["connected"])
    if listeners:
        out.append(f"listeners: {connected} connected")
        out.append(
            format_table(
                ["worker", "connected", "listening", "provider", "rows held", "lease until"],
                [
                    [
                        r["worker"],
                        r["connected"],
                        r["listening"],
                        r.get("provider"),
                        r["rows_held"],
                        r["earliest_lease_until"],
                    ]
                    for r in listeners
                ],
            )
        )
    else:
        out.append("listeners: none connected")
    out += render_providers(providers or [])
    return "\n".join(out)


def render_providers(providers: list) -> list[str]:
    """Rows that only one provider may take, and a warning for each provider that no
    connected listener runs: those rows wait until one does (or are requeued)."""
    waiting = [p for p in providers if p["pinned"] or p["generating"]]
    if not waiting:
        return []
    out = ["", "rows for one provider:"]
    out.append(
        format_table(
            ["provider", "pinned waiting", "generating", "listeners running it"],
            [[p["provider"], p["pinned"], p["generating"], p["listeners"]] for p in waiting],
        )
    )
    for p in waiting:
        if p["listeners"]:
            continue
        unsure = (
            f" ({p['unknown_listeners']} connected listener(s) do not say which provider they run)"
            if p["unknown_listeners"]
            else ""
        )
        what = []
        if p["pinned"]:
            what.append(f"{p['pinned']} pinned row(s) wait")
        if p["generating"]:
            what.append(f"{p['generating']} generation(s) wait to be followed")
        out.append(
            f"warning: no connected listener runs provider {p['provider']}{unsure}: "
            f"{' and '.join(what)}; start one with IMAGE_PROVIDER={p['provider']}"
            + (
                f", or move its generations back to the queue with `listener requeue "
                f"--provider {p['provider']}` (each costs a new paid draw)"
                if p["generating"]
                else ""
            )
        )
    return out
