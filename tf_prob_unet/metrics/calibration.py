"""Calibration measures (reliability of the sampled per-pixel frequencies).

NumPy only, like the rest of the package; no measure is defined here yet.
"""

__all__ = []
