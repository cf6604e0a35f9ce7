"""``atomic_writer``: a write the operating system refuses part-way (a full disk, a file-size
limit) leaves neither the file nor its temporary, and is one line naming the file."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

SCRIPT = """
import sys, typer
from clipa_cli.common import reports_errors
from clipa_data.core.atomic import write_json

@reports_errors
def main():
    write_json(sys.argv[1], {"text": "x" * 100_000})

try:
    main()
except typer.Exit as done:
    sys.exit(done.exit_code)
"""


def _small_file_limit() -> None:
    # Past RLIMIT_FSIZE a write fails with EFBIG and no file name, as on a full disk (ENOSPC);
    # SIGXFSZ would kill the process instead unless ignored.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_refused_write_is_one_line_naming_the_file(tmp_path):
    target = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(target)], preexec_fn=_small_file_limit,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {target}: File too large"), lines
    assert "the operating system refused it" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no file, no temporary
