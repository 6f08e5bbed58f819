"""`listener export ID [-o FILE] [--force]` and `listener export --ready DIR [--force]`.

The file's extension comes from the image's format (PNG -> .png, JPEG -> .jpg). `-o -`
writes the raw bytes to stdout. Exit 3 when the id is unknown, 4 when the row has no
image (yet) or its image does not decode as a PNG or JPEG (listener.images).

Files are written safely, whatever a directory holds: each image goes to a new
temporary file in the target directory (O_CREAT | O_EXCL | O_NOFOLLOW, so nothing
planted there is opened), then is linked into place, which fails rather than replace
an existing name; with --force it is renamed over it instead, which replaces a symlink
itself, never the file the link points to. No existing file is overwritten without
--force: `export ID` refuses, `export --ready` skips it and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import secrets
import sys
from pathlib import Path

from listener.commands.common import prepare
from listener.errors import InvalidImage, NotFound, UsageError, WrongState
from listener.images import inspect_image
from listener.operator import (
    EXIT_OK,
    connect,
    decode_image,
    fetch_one,
    query,
)

log = logging.getLogger("listener")

EXIT_INVALID = WrongState.exit_code
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
FILE_MODE = 0o644


class Exists(Exception):
    """The target name is taken (a file, a directory or a link)."""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="write an image (or every ReadyToPublish image) to a file",
        description="Write an image to image-<id>.<ext> (or FILE; '-' for stdout), or with "
        "--ready every ReadyToPublish image to DIR/<id>.<ext>. The extension follows the "
        "image's format (png, jpg). An existing file is never replaced without --force "
        "(--ready skips it), and a symlink in the way is never followed. Exit codes: "
        "0 ok, 2 bad usage or the file exists, 3 no such image, 4 the image has no data "
        "or does not decode as a PNG or JPEG.",
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
    p.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a symlink is replaced, not followed)",
    )
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if (args.id is None) == (args.ready is None):
        raise UsageError("export needs either an image ID or --ready DIR (not both)")
    if args.ready is not None and args.output is not None:
        raise UsageError("-o/--output goes with an image ID, not with --ready")
    ctx = prepare(args, announce_db=False)
    if args.ready is not None:
        return export_ready(ctx.conninfo, args.ready, force=args.force)
    with connect(ctx.conninfo, "export") as conn:
        row = fetch_one(conn, "image", {"id": args.id})
    if row is None:
        raise NotFound(f"image {args.id} does not exist")
    if row["base64"] is None:
        raise WrongState(f"image {args.id} has no image (status {row['status']})")
    data, ext = checked_image(args.id, row["base64"])
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.output or f"image-{args.id}.{ext}")
    try:
        write_file(target, data, force=args.force)
    except Exists:
        raise UsageError(f"{target} exists: --force replaces it") from None
    print(target)
    return EXIT_OK


def checked_image(image_id: int, text: str) -> tuple[bytes, str]:
    """The row's image bytes and file extension; WrongState when it does not decode."""
    data = decode_image(image_id, text)
    try:
        info = inspect_image(data)
    except InvalidImage as exc:
        raise WrongState(f"image {image_id}: the stored image is invalid: {exc.message}") from None
    return data, EXTENSIONS[info.format]


def write_file(target: Path, data: bytes, *, force: bool = False) -> None:
    """Write `data` to `target` through a fresh temporary file in its directory (see the
    module docstring); Exists when the name is taken and not `force`."""
    folder = target.parent
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot write into {folder}: {exc.strerror}") from None
    try:
        _write_at(dir_fd, target.name, data, force=force, shown=target)
    finally:
        os.close(dir_fd)


def _write_at(dir_fd: int, name: str, data: bytes, *, force: bool, shown: Path) -> None:
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise UsageError(f"cannot write {shown}: {exc.strerror}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if force:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                _link_new(dir_fd, temp, name)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise Exists(name) from None
            raise UsageError(f"cannot write {shown}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)


def _link_new(dir_fd: int, temp: str, name: str) -> None:
    """Give the temporary file its name unless the name is taken (atomic: link(2) never
    replaces, and does not follow a symlink at the new name)."""
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise Exists(name) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A file system without hard links: check, then rename (a narrow race remains).
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        raise Exists(name) from None


def export_ready(conninfo: str, folder: Path, *, force: bool = False) -> int:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot create {folder}: {exc.strerror}") from None
    written = skipped = invalid = 0
    try:
        # A server-side cursor: one image in memory at a time, however many there are.
        with (
            connect(conninfo, "export") as conn,
            conn.transaction(),
            conn.cursor(name="ready_images") as cur,
        ):
            cur.itersize = 20
            cur.execute(query("ready_images"))
            for row in cur:
                try:
                    data, ext = checked_image(row["id"], row["base64"])
                except WrongState as exc:
                    print(f"listener: {exc.message}", file=sys.stderr)
                    invalid += 1
                    continue
                name = f"{row['id']}.{ext}"
                try:
                    _write_at(dir_fd, name, data, force=force, shown=folder / name)
                except Exists:
                    skipped += 1
                    continue
                written += 1
    finally:
        os.close(dir_fd)
    summary = f"{written} image(s) written to {folder}"
    if skipped:
        summary += f"; {skipped} skipped, their files exist (--force replaces them)"
    if invalid:
        summary += f"; {invalid} refused, their images do not decode"
    print(summary)
    return EXIT_INVALID if invalid else EXIT_OK
