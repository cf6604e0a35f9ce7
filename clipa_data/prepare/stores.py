"""Output locations given as fsspec URLs for ``convert`` and ``tag`` (issue 15 item 2, partly).

``file://`` URLs are local paths and are used as such (same bytes, and the local hardlink/move
placement modes keep working). Other stores are refused in one line before anything is
written: naming the fsspec package to install when it is missing, else saying that staging to
object storage is not built yet. Typer turns ``gs://b/x`` into ``gs:/b/x`` for a Path argument,
so both spellings are recognised.
"""

from __future__ import annotations

import re
from pathlib import Path

from clipa_data.core.errors import ClipaError

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/+(.*)", re.DOTALL)


def local_path(location: str | Path, what: str) -> Path:
    """``location`` as a local path: plain paths and ``file://`` URLs; one line otherwise."""
    match = _URL.fullmatch(str(location))
    if match is None or len(match.group(1)) == 1:  # no scheme (or a Windows drive letter)
        return Path(location)
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol in ("file", "local"):
        return Path("/" + rest.lstrip("/"))
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
    raise ClipaError(
        f"{what} {location}: writing to {protocol}:// is not supported yet; use a local folder "
        "(or a mounted bucket) or a file:// URL, then copy the result"
    )
