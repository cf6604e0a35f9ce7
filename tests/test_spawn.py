"""The spawn guard: which call sites would make spawned workers re-run a script."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from clipa_data.prepare.spawn import line_is_guarded

SOURCE = textwrap.dedent(
    """\
    import os
    run()
    if __name__ == "__main__":
        run()
        main()
    if "__main__" == __name__:
        run()
    if __name__ == "__mp_main__":
        run()
    def f():
        if __name__ == "__main__":
            run()
    """
)


def test_only_lines_inside_a_top_level_main_guard_are_guarded():
    guarded = {n for n in range(1, SOURCE.count("\n") + 1) if line_is_guarded(SOURCE, n)}
    assert guarded == {3, 4, 5, 6, 7}


def test_check_passes_for_a_guarded_script_and_fails_for_an_unguarded_one(tmp_path):
    body = (
        "from clipa_data.prepare.spawn import check_spawn_safe\n"
        "def main():\n"
        "    check_spawn_safe('demo()')\n"
        "    print('ok')\n"
    )
    guarded = tmp_path / "guarded.py"
    guarded.write_text(body + "if __name__ == '__main__':\n    main()\n")
    unguarded = tmp_path / "unguarded.py"
    unguarded.write_text(body + "main()\n")

    ok = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok"
    bad = subprocess.run([sys.executable, str(unguarded)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert f"demo() called at top level of {unguarded}:5" in bad.stderr


def test_python_dash_c_is_never_reimported():
    code = (
        "from clipa_data.prepare.spawn import check_spawn_safe; check_spawn_safe('x'); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok"
