"""Demo data: procedurally drawn scenes served over local HTTP, LAION-like metadata pointing at
them, and a held-out zero-shot validation set.

Typical use (tests, the end-to-end demo)::

    from clipa_data.demo import serve_demo_images, write_demo_metadata, write_demo_validation

    with serve_demo_images() as base_url:              # http://127.0.0.1:<port>
        meta = write_demo_metadata(tmp / "meta.parquet", base_url, count=200, seed=0)
        ...  # run the download while the server is up
    val = write_demo_validation(tmp / "eval", per_class=10, seed=0)

The concept space is 5 colours x 4 shapes (``CLASS_NAMES``: ``"blue circle"`` ...); every
training caption names the colour and shape of every object it shows, so a tiny CLIP can learn
zero-shot classification of the validation set with prompts like ``"a photo of a red circle."``.
"""

from clipa_data.demo.metadata import (
    BROKEN_KINDS,
    DEAD_PORT_URL,
    SCHEMA,
    DemoMetadata,
    write_demo_metadata,
)
from clipa_data.demo.scenes import CLASS_NAMES, CLASSES, COLOURS, SHAPES
from clipa_data.demo.server import serve_demo_images
from clipa_data.demo.validation import (
    CLASS_FOLDERS,
    TEMPLATES,
    DemoValidation,
    write_demo_validation,
)

__all__ = [
    "BROKEN_KINDS",
    "CLASSES",
    "CLASS_FOLDERS",
    "CLASS_NAMES",
    "COLOURS",
    "DEAD_PORT_URL",
    "SCHEMA",
    "SHAPES",
    "TEMPLATES",
    "DemoMetadata",
    "DemoValidation",
    "serve_demo_images",
    "write_demo_metadata",
    "write_demo_validation",
]
