"""What produced a file: package versions and the machine, for manifests and benchmark JSON."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from clipa_data.core import __version__


def package_versions(names: list[str]) -> dict[str, str | None]:
    """Installed versions of ``names`` (None when a package is not installed)."""
    versions: dict[str, str | None] = {"clipa": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Cores, CPU, memory, OS and Python: enough to compare benchmark runs."""
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
