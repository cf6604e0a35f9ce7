"""Where ``convert`` and ``tag`` write: a local folder, or any fsspec store (issue 15 item 2).

Plain paths and ``file://`` URLs are local paths and are used as such (same bytes, and the local
hardlink/symlink/move placement modes keep working). Any other URL (``gs://``, ``s3://``,
``hdfs://``, ``memory://``, ...) is a store, reached through the fsspec package of its scheme,
which the user installs (``gcsfs``, ``s3fs``, ...); a missing one is refused in one line naming
it, before anything is written. Typer turns ``gs://b/x`` into ``gs:/b/x`` for a Path argument,
so both spellings are recognised.

A file for a store is written to a local temporary folder exactly as it would be written
locally (``write_to``), then published (``publish``): put to a hidden temporary key next to its
final key, then copied to the final key and the temporary deleted. Object stores (GCS, S3,
Azure) have no rename, but a server-side copy of one object is atomic: the final key appears
complete or not at all. HDFS has an atomic rename and no server-side copy, so there the
temporary is renamed instead (``ATOMIC_RENAME``). A killed run leaves at most temporary keys,
which ``remove_temporaries`` clears (their names are ``atomic.is_temporary`` names).

Workers (pool processes, Spark executors) publish their own shards, so every worker reaches the
store with its own credentials. fsspec's ``memory://`` lives inside one process: it suits
``--workers 1`` (the tests), not a pool.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipa_data.core import atomic, layout
from clipa_data.core.errors import ClipaError

LOCAL_PROTOCOLS = ("file", "local")
ATOMIC_RENAME = ("hdfs", "viewfs", "webhdfs", "arrow_hdfs")
"""Schemes whose rename is atomic (a temporary is renamed there, copied elsewhere)."""


def _store_url(location: str | Path, what: str) -> str | None:
    """``location`` as a store URL, or None when it is a local path; one line if unusable."""
    text = str(location)
    url = layout.split_url(text)
    if url is None:
        return None
    protocol, rest = url
    if protocol in LOCAL_PROTOCOLS:
        return None
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as error:
        raise ClipaError(
            f"{what} {location}: the {protocol}:// filesystem needs its fsspec package ({error}); "
            "install it, or use a local folder"
        ) from None
    except ValueError:
        raise ClipaError(f"{what} {location}: fsspec knows no {protocol}:// filesystem") from None
    # Typer's Path argument leaves one slash after the scheme: restore the two of a URL.
    return text if "://" in text else f"{protocol}://{rest}"


def local_path(location: str | Path, what: str) -> Path:
    """``location`` as a local path: plain paths and ``file://`` URLs; one line otherwise."""
    url = _store_url(location, what)
    if url is not None:
        raise ClipaError(
            f"{what} {location}: must be a local folder or a file:// URL; copy it here first"
        )
    url = layout.split_url(location)
    return Path(location) if url is None else Path("/" + url[1].lstrip("/"))


def check_workers_reach(location: str | Path, workers: int, distributor: str, what: str) -> None:
    """Refuse a ``memory://`` store for a pool or Spark: each worker would write to a store of
    its own process, and the shards would vanish (one line with the fix)."""
    if str(location).startswith("memory:") and (workers > 1 or distributor == "pyspark"):
        raise ClipaError(
            f"{what} {location}: fsspec's memory:// lives inside one process, so pool or Spark "
            "workers cannot write to it; pass --workers 1 with the multiprocessing distributor"
        )


def output_location(location: str | Path, what: str) -> Path | str:
    """A local ``Path`` (plain path or ``file://``), or the URL of an fsspec store."""
    url = _store_url(location, what)
    return local_path(location, what) if url is None else url


def filesystem(url: str):
    """The fsspec filesystem of ``url`` and the path within it."""
    return layout.filesystem(url)


def _temporary_key(path: str) -> str:
    # A uuid, not the pid: two Spark executors on different hosts may share a pid.
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}{atomic.TEMP_MARKER}{uuid.uuid4().hex}")


def _renames_atomically(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return any(protocol in ATOMIC_RENAME for protocol in protocols)


def publish(local: Path, url: str) -> int:
    """Put the local file at ``url`` so that ``url`` appears complete or not at all.

    Returns the size; a store that fails is one line naming the key.
    """
    fs, path = filesystem(url)
    temporary = _temporary_key(path)
    size = Path(local).stat().st_size
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.put_file(str(local), temporary)
        if fs.size(temporary) != size:
            raise OSError(f"the store holds {fs.size(temporary)} of {size} bytes after the upload")
        if _renames_atomically(fs):
            fs.mv(temporary, path)
        else:
            fs.copy(temporary, path)
    except OSError as error:
        raise ClipaError(f"cannot write {url}: {error}; re-run to retry") from None
    finally:
        with contextlib.suppress(OSError):
            if fs.exists(temporary):
                fs.rm_file(temporary)
    return size


@contextlib.contextmanager
def staged(url: str) -> Iterator[Path]:
    """A local path to write ``url``'s bytes to; published when the block finishes."""
    with tempfile.TemporaryDirectory(prefix="clipa-stage-") as folder:
        local = Path(folder) / posixpath.basename(url)
        yield local
        publish(local, url)


def write_to(location: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(path)`` on ``location`` itself when local, else on a staged local file."""
    if not layout.is_url(location):
        write(Path(location))
        return
    with staged(str(location)) as local:
        write(local)


def write_json(location: str | Path, payload: Any) -> None:
    """``atomic.write_json`` to a local path or a store URL."""
    write_to(location, lambda path: atomic.write_json(path, payload))


def read_json(url: str) -> Any | None:
    """The JSON at a store URL, or None when there is none; one line when it is not JSON."""
    fs, path = filesystem(url)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise ClipaError(f"{url} is damaged (not JSON); remove it") from None


def sizes(url: str) -> dict[str, int]:
    """File name -> size of the files directly in the store folder ``url`` (none: empty)."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {
        posixpath.basename(entry["name"].rstrip("/")): int(entry.get("size") or 0)
        for entry in entries
        if entry.get("type") == "file"
    }


def size(url: str) -> int | None:
    """Size of the file at ``url``, or None when there is none."""
    fs, path = filesystem(url)
    try:
        return int(fs.size(path))
    except FileNotFoundError:
        return None


def remove_temporaries(location: str | Path) -> list[str]:
    """``atomic.remove_temporaries`` for a local folder or a store folder."""
    if not layout.is_url(location):
        return [str(path) for path in atomic.remove_temporaries(Path(location))]
    fs, path = filesystem(str(location))
    removed = [
        posixpath.join(path, name)
        for name in sizes(str(location))
        if atomic.is_temporary(Path(name))
    ]
    for key in removed:
        fs.rm_file(key)
    return removed


def is_empty(url: str) -> bool:
    """Whether nothing is stored under ``url``."""
    fs, path = filesystem(url)
    try:
        return not fs.ls(path, detail=False)
    except FileNotFoundError:
        return True


def remove_tree(url: str) -> None:
    """Delete everything stored under ``url``."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
