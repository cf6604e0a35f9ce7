"""The ``clipa-data`` and ``clipa-train`` command-line apps (installed as ``clipa_cli``).

Commands parse options into a config dataclass and call the library; no logic lives here.
"""
