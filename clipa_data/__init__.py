"""clipa_data: offline data preparation for CLIPA-style CLIP training.

Download with img2dataset, convert to a TFDS builder directory, and tag captions once into Arrow
sidecars (``clipa_data.prepare``), over what training reads too (``clipa_data.core``).
This package never imports torch; heavy libraries are imported inside the functions
that need them.
"""

from clipa_data.core import __version__

__all__ = ["__version__"]
