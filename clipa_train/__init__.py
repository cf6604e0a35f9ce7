"""clipa_train: the thin CLIPA trainer (PyTorch, PyTorch/XLA).

Only this package imports torch, and only ``clipa_train.backend`` imports torch_xla.
"""

from clipa_data.core import __version__

__all__ = ["__version__"]
