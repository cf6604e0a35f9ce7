"""The offline stages: download (img2dataset), convert (to a TFDS builder directory), tag
(POS sidecars), and what they share (runner, source formats, inspection, placement, metadata).
"""
