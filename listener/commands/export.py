"""`listener export ID [-o FILE]` and `listener export --ready DIR`: images to files.

The file's extension comes from the image's magic bytes (PNG -> .png, JPEG -> .jpg).
`-o -` writes the raw bytes to stdout. Exit 3 when the id is unknown, 4 when the row has
no image (yet).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from listener.commands.common import prepare
from listener.errors import NotFound, UsageError, WrongState
from listener.operator import (
    EXIT_OK,
    connect,
    decode_image,
    fetch_one,
    image_extension,
    query,
)

log = logging.getLogger("listener")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write an image (or every ReadyToPublish image) to a file",
        description="Write an image to image-<id>.<ext> (or FILE; '-' for stdout), or with "
        "--ready every ReadyToPublish image to DIR/<id>.<ext>. The extension follows the "
        "image's bytes (png, jpg). Exit codes: 0 ok, 2 bad usage, 3 no such image, "
        "4 the image has no data.",
    )
    p.add_argument("id", nargs="?", type=int, help="the image id")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write ('-' for stdout; default image-<id>.<ext>)",
    )
    p.add_argument(
        "--ready",
        metavar="DIR",
        type=Path,
        help="export every ReadyToPublish image into DIR (created if missing)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.ready is None):
        raise UsageError("export needs either an image ID or --ready DIR (not both)")
    if args.ready is not None and args.output is not None:
        raise UsageError("-o/--output goes with an image ID, not with --ready")
    ctx = prepare(args, announce_db=False)
    if args.ready is not None:
        return export_ready(ctx.conninfo, args.ready)
    with connect(ctx.conninfo, "export") as conn:
        row = fetch_one(conn, "image", {"id": args.id})
    if row is None:
        raise NotFound(f"image {args.id} does not exist")
    if row["base64"] is None:
        raise WrongState(f"image {args.id} has no image (status {row['status']})")
    data = decode_image(args.id, row["base64"])
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.output or f"image-{args.id}.{image_extension(data)}")
    _write(target, data)
    print(target)
    return EXIT_OK


def _write(target: Path, data: bytes) -> None:
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None


def export_ready(conninfo: str, folder: Path) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder}: {exc.strerror}") from None
    count = 0
    # A server-side cursor: one image in memory at a time, however many there are.
    with (
        connect(conninfo, "export") as conn,
        conn.transaction(),
        conn.cursor(name="ready_images") as cur,
    ):
        cur.itersize = 20
        cur.execute(query("ready_images"))
        for row in cur:
            data = decode_image(row["id"], row["base64"])
            _write(folder / f"{row['id']}.{image_extension(data)}", data)
            count += 1
    print(f"{count} image(s) written to {folder}")
    return EXIT_OK
