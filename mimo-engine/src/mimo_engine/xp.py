"""The array module every model function computes with: numpy, or CuPy when MIMO_ENGINE_ARRAY=cupy.

Model code writes `xp.matmul(...)`, never `np.matmul(...)`, so that the same functions run on a GPU once CuPy is
installed. Results leave the engine as numpy arrays through `to_numpy`.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import numpy as np


def _select() -> ModuleType:
    wanted = os.environ.get("MIMO_ENGINE_ARRAY", "numpy").strip().lower()
    if wanted == "cupy":
        try:
            import cupy  # type: ignore[import-not-found]
        except ImportError:
            warnings.warn("MIMO_ENGINE_ARRAY=cupy but CuPy does not import; computing with numpy", stacklevel=2)
        else:
            return cupy
    elif wanted not in ("", "numpy"):
        raise ValueError(f"MIMO_ENGINE_ARRAY={wanted!r}: expected 'numpy' or 'cupy'")
    return np


xp: ModuleType = _select()


def to_numpy(array) -> np.ndarray:
    """The array as a host numpy array (a no-op under numpy)."""
    return array if xp is np else xp.asnumpy(array)
