"""Convert's folders before placement: reuse a finished conversion, resume or start the staging.

The final builder folder ``<out>/<name>/<version>`` and its hidden staging folder
``.<version>.partial`` each hold a convert manifest. A plan whose ``identity`` equals the
stored one is the same conversion (reused, or resumed from the staging folder); another
conversion at the same place stops the run unless ``--overwrite`` may discard it, and never when
it holds shards moved out of their source (the only copy).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clipa_data.core.atomic import remove_temporaries
from clipa_data.core.errors import ClipaError
from clipa_data.prepare.manifest import ConvertManifest, read_manifest, write_manifest


def _refuse_to_discard_moved(folder: Path, previous: ConvertManifest) -> None:
    if previous.config.method == "move":
        raise ClipaError(
            f"{folder} holds shards moved out of {previous.source.folder}; discarding it "
            "would delete the only copy; finish or keep that conversion and choose another "
            "--version or OUT"
        )


def existing_conversion(
    final: Path, manifest: ConvertManifest, overwrite: bool
) -> ConvertManifest | None:
    """The manifest of ``final`` when it already holds this very conversion, else None.

    Raises when ``final`` holds something else, unless ``overwrite`` may replace it.
    """
    if not final.exists():
        return None
    previous = read_manifest(final)
    if previous is None:
        raise ClipaError(
            f"{final} exists but was not written by clipa-data convert; "
            "remove it yourself, or choose another --version or OUT"
        )
    if previous.covers(manifest):  # also when it was checked more thoroughly than asked
        return previous
    if not overwrite:
        tags = " (its sidecars/ tags included)" if (final / "sidecars").is_dir() else ""
        difference = previous.difference(manifest)
        if difference == "different shards":  # same folder and options: SRC itself changed
            difference += ": SRC's shards changed since it was converted"
        raise ClipaError(
            f"{final} already holds another conversion ({difference}); "
            f"re-run with its options, or pass --overwrite to replace it{tags}, or choose "
            "another --version or OUT"
        )
    _refuse_to_discard_moved(final, previous)
    return None


def prepare_staging(staging: Path, manifest: ConvertManifest, overwrite: bool) -> bool:
    """Create (or adopt) the staging folder and write the plan; True when resuming a run."""
    previous = read_manifest(staging) if staging.is_dir() else None
    if previous is not None and previous.identity() != manifest.identity():
        if not overwrite:
            raise ClipaError(
                f"{staging} holds an unfinished conversion ({previous.difference(manifest)}); "
                "re-run with the same options to finish it, or pass --overwrite to discard it"
            )
        _refuse_to_discard_moved(staging, previous)
        shutil.rmtree(staging)
        previous = None
    staging.mkdir(parents=True, exist_ok=True)
    remove_temporaries(staging)
    write_manifest(staging, manifest)
    return previous is not None
