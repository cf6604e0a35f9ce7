"""What both preparation and training read: errors, layout, record codecs, tokenizer, text
reduction, sidecars, taggers, atomic writes, provenance.

Nothing here imports TensorFlow, img2dataset, Spark or a tagger at import time (taggers load
inside the function that needs them), so the training process can import all of it.
"""

__version__ = "0.1.0"
