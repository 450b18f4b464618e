"""vidbatch: index video archives with deep learning (Ray Data + PyAV + PyTorch -> Parquet)."""

from __future__ import annotations

__version__ = "0.1.0"
