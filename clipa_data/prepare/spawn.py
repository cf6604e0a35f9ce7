"""Fail clearly, before any worker starts, when spawn-based process pools would re-run a script.

Processes started with the ``spawn`` method (img2dataset's pool and logger, our runner) re-import
the parent's main script in every child. A script that starts them at top level, outside
``if __name__ == "__main__":``, makes every child try to start them again: the children die with
``RuntimeError`` during bootstrapping and img2dataset's parent waits for them forever (verified:
a 20-row download never finished). ``check_spawn_safe`` detects that case up front.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from types import FrameType

from clipa_data.core.errors import ClipaError

FIX = 'put the call under `if __name__ == "__main__":` (spawned worker processes re-import it)'


def _is_main_guard(node: ast.AST) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either operand order)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    operands = [test.left, test.comparators[0]]
    names = [o.id for o in operands if isinstance(o, ast.Name)]
    constants = [o.value for o in operands if isinstance(o, ast.Constant)]
    return names == ["__name__"] and constants == ["__main__"]


def line_is_guarded(source: str, line: int) -> bool:
    """Whether ``line`` of a module's ``source`` lies inside a top-level ``__main__`` guard."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return True  # cannot tell; let the call go ahead
    return any(
        _is_main_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno)
        for node in tree.body
    )


def _main_module_frame(frame: FrameType | None, main_globals: dict) -> FrameType | None:
    """The frame running the main script's top-level code, if it is on the stack."""
    while frame is not None:
        if frame.f_globals is main_globals and frame.f_code.co_name == "<module>":
            return frame
        frame = frame.f_back
    return None


def _main_is_reimported(main) -> bool:
    """Whether spawned children re-run the main module (mirrors ``multiprocessing.spawn``)."""
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return False  # ``python -m package`` is never re-imported by the children
    return getattr(main, "__file__", None) is not None  # interactive sessions and -c are not


def check_spawn_safe(caller: str) -> None:
    """Raise ``ClipaError`` if starting spawn workers from here would re-run the main script.

    ``caller`` names the API in the message, e.g. ``clipa_data.prepare.download.download()``.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # The stdlib's own flag (multiprocessing.spawn._check_not_importing_main): we are a child
        # re-importing an unguarded script.
        raise ClipaError(f"{caller} ran while a worker process re-imported your script; {FIX}")
    main = sys.modules.get("__main__")
    if main is None or not _main_is_reimported(main):
        return
    frame = _main_module_frame(sys._getframe(1), vars(main))
    if frame is None:
        return  # called from a thread, a callback or an import: not the script's top level
    try:
        with open(main.__file__, encoding="utf-8") as handle:
            source = handle.read()
    except (OSError, UnicodeDecodeError):
        return
    if not line_is_guarded(source, frame.f_lineno):
        raise ClipaError(f"{caller} called at top level of {main.__file__}:{frame.f_lineno}; {FIX}")
