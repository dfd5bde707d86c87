"""Llama 3.x rope scaling from a GGUF's `rope_freqs.weight`.

llama.cpp's converter writes Llama-3.1-style scaling as one divisor per rope frequency (`rope_freqs`,
head_dim / 2 floats) and no `rope.scaling.*` metadata. The divisors are 1 for short wavelengths,
`factor` for long ones and, in between, 1 / ((1 - s) / factor + s) with the smoothing
s = (original_context / wavelength - low) / (high - low), which is linear in 1 / wavelength. Only
two numbers of (original_context, low, high) show in the divisors (the slope and the intercept of
s), so low_freq_factor is taken as 1, Llama 3's own value, and the other two solved for; the
rebuilt Hugging Face `rope_scaling` dict is then checked to reproduce every divisor.
"""

from __future__ import annotations

import math

import numpy as np

_LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_divisors(scaling: dict, theta: float, rotary_dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp writes as rope_freqs for an HF llama3 `rope_scaling`."""
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    orig = scaling["original_max_position_embeddings"]
    smooth = (orig / wavelen - low) / (high - low)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < orig / high, 1.0, np.where(wavelen > orig / low, factor, medium))


def _tidy(x: float) -> float:
    """x as written in a config: a whole number when it is one to 1e-4, else 6 decimals."""
    r = round(x)
    return float(r) if abs(x - r) <= 1e-4 * max(1.0, abs(x)) else round(float(x), 6)


def llama3_scaling_from_divisors(divisors: np.ndarray, theta: float, original_context: int | None) -> dict | None:
    """The HF `rope_scaling` dict whose llama3 divisors are `divisors`, None when they are all 1;
    raises ValueError when no llama3 scaling reproduces them."""
    d = np.asarray(divisors, dtype=np.float64)
    rotary_dim = 2 * d.size
    factor = float(d.max())
    if np.allclose(d, 1.0, rtol=0, atol=1e-6):
        return None
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    medium = (d > 1 + 1e-4) & (d < factor * (1 - 1e-4))
    candidates = []
    s = (1 / d[medium] - 1 / factor) / (1 - 1 / factor)
    if medium.sum() == 1:  # one point: Llama 3's low 1 and high 4 give the original context
        candidates.append({"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": int(_tidy((3 * s[0] + 1) * wavelen[medium][0]))})
    if medium.sum() >= 2:
        slope, intercept = np.polyfit(1 / wavelen[medium], s, 1)  # s = slope / wavelength + intercept
        if intercept < 0 and slope > 0:
            span = -1.0 / intercept  # high - low, with low = 1
            candidates.append({"low_freq_factor": 1.0, "high_freq_factor": _tidy(1.0 + span),
                               "original_max_position_embeddings": int(_tidy(slope * span))})
    defaults = dict(_LLAMA3_DEFAULTS)
    if original_context:
        defaults["original_max_position_embeddings"] = int(original_context)
    candidates.append(defaults)
    for params in candidates:
        scaling = {"rope_type": "llama3", "factor": _tidy(factor), **params}
        if np.allclose(llama3_divisors(scaling, theta, rotary_dim), d, rtol=1e-4, atol=0):
            return scaling
    raise ValueError(
        "rope_freqs.weight holds per-frequency rope divisors that no llama3 rope scaling reproduces "
        f"(max divisor {factor:g}); tvmlm supports rope_freqs only as Llama 3.x scaling"
    )
