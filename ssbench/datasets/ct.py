"""CT intensity handling: detect stored values vs Hounsfield units, then apply a recorded window."""

from __future__ import annotations

import numpy as np

# CT air is about -1000 HU. A volume whose minimum is at or above 0 holds raw stored values (HU + 1024 with the
# usual rescale intercept of -1024); a volume that reaches below -500 is already in HU.
STORED_OFFSET = -1024.0


def to_hounsfield(volume: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """Return (volume in HU, the storage detected or forced: 'hu' or 'stored')."""
    volume = volume.astype(np.float32)
    if mode == "auto":
        lo = float(volume.min())
        mode = "hu" if lo < -500 else "stored" if lo >= 0 else "hu"
    if mode == "stored":
        volume = volume + STORED_OFFSET
    return volume, mode


def window(volume_hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] HU and scale to [0, 1]."""
    return ((np.clip(volume_hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)
