"""Measures of feature visualisations (pure NumPy functions on arrays).

- :func:`total_variation` and :func:`fourier_total_variation`: the interpretability proxy of
  the frivolous-units paper (Casper et al. 2021, Section 5: "the total variations of these
  images and their Fourier transforms");
- :func:`softmax_entropy`: the output-coherence measure of the importance-and-coherence
  paper (Hod et al., Section 3.1.2), in bits;
- :func:`set_dispersion`: variance and coefficient of variation of a unit set's activations
  (Hod et al., Appendix A.8).
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def _as_images(x) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"images must be [B, H, W] or [B, C, H, W], got shape {list(np.shape(x))}")
    return a


def total_variation(images) -> np.ndarray:
    """Anisotropic total variation of each image: the sum over channels and pixels of the
    absolute differences between vertically and horizontally adjacent pixels.

    Parameters
    ----------
    images : array [B, H, W] or [B, C, H, W]

    Returns
    -------
    float64 [B], in the images' units (pixel values).

    Raises
    ------
    ValueError
        Another rank.
    """
    a = _as_images(images)
    return (np.abs(np.diff(a, axis=2)).sum(axis=(1, 2, 3))
            + np.abs(np.diff(a, axis=3)).sum(axis=(1, 2, 3)))


def fourier_total_variation(images) -> np.ndarray:
    """Total variation of each image's centred 2-D Fourier magnitude spectrum,
    |fftshift(fft2(image))| per channel (normalised by the number of pixels, ``norm="ortho"``).

    Parameters
    ----------
    images : array [B, H, W] or [B, C, H, W]

    Returns
    -------
    float64 [B]

    Raises
    ------
    ValueError
        Another rank.
    """
    a = _as_images(images)
    mag = np.abs(np.fft.fftshift(np.fft.fft2(a, norm="ortho"), axes=(2, 3)))
    return total_variation(mag)


def softmax_entropy(logits) -> np.ndarray:
    """Entropy of the softmax of each row of logits, in **bits**.

    Parameters
    ----------
    logits : array [B, classes]

    Returns
    -------
    float64 [B], between 0 and log2(classes).
    """
    lp = log_softmax(np.asarray(logits, np.float64), axis=-1)
    return -(np.exp(lp) * lp).sum(axis=-1) / np.log(2.0)


def set_dispersion(acts) -> tuple[np.ndarray, np.ndarray]:
    """Variance and coefficient of variation (std / mean) of each row of unit activations.

    Parameters
    ----------
    acts : array [B, k]
        Row b: the activations of a unit set's k units on image b (conv channels already
        averaged over positions).

    Returns
    -------
    variance : float64 [B]
        Population variance over the k units.
    cv : float64 [B]
        Standard deviation / mean; NaN where the mean is 0.
    """
    a = np.asarray(acts, np.float64)
    var = a.var(axis=-1)
    mean = a.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(mean != 0, np.sqrt(var) / mean, np.nan)
    return var, cv
