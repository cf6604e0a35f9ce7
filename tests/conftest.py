"""Shared pytest fixtures and environment for the whole suite."""

from __future__ import annotations

import os

# img2dataset imports albumentations, which otherwise phones home on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Keep TensorFlow quiet and single-threaded enough for a 2-core machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
