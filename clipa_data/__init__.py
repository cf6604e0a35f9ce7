"""clipa_data: offline data preparation for CLIPA-style CLIP training.

Download with img2dataset, convert to a TFDS builder directory, and tag captions once into Arrow
sidecars. This package never imports torch; heavy libraries are imported inside the functions
that need them.
"""

__version__ = "0.1.0"
