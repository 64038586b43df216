"""What the synthetic generators share: per-example seeding, smooth noise, pixel grids.

Each example depends only on ``(seed, split, index)`` through `example_rng`, so generation is
deterministic and order-independent. Pure NumPy/SciPy.
"""

import functools

import numpy as np

SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
REFERENCE_SIZE = 64  # All lengths below are given for 64x64 images.


def example_rng(seed, split, index):
  """Returns the random generator of one example.

  Args:
    seed: int, the config seed.
    split: str split name ("train", "validation", "test") or its int code
      (0, 1, 2).
    index: int, index of the example inside its split.

  Returns:
    A `np.random.Generator` seeded with ``[seed, split_code, index]``.
  """
  split_code = SPLIT_CODES[split] if isinstance(split, str) else int(split)
  return np.random.default_rng([int(seed), split_code, int(index)])


@functools.lru_cache(maxsize=64)
def _gaussian_transfer(size, sigmas):
  """Fourier transfer functions of periodic Gaussian filters.

  Args:
    size: int, image size S.
    sigmas: tuple of K filter widths in pixels.

  Returns:
    float64 array [K, S, S // 2 + 1] (for `np.fft.rfft2`).
  """
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  sigmas = np.asarray(sigmas, dtype=np.float64)[:, None, None]
  return np.exp(-2.0 * (np.pi * sigmas)**2 * (fy**2 + fx**2)[None])


def _smooth_noise(rng, size, sigmas):
  """Periodic Gaussian-filtered white noise fields, each with unit std.

  Args:
    rng: `np.random.Generator`.
    size: int, image size S.
    sigmas: sequence of K Gaussian filter widths in pixels (one per field).

  Returns:
    float64 array [K, S, S]; each field has zero mean and unit std.
  """
  sigmas = tuple(float(sigma) for sigma in sigmas)
  white = rng.standard_normal((len(sigmas), size, size))
  noise = np.fft.irfft2(
      np.fft.rfft2(white) * _gaussian_transfer(size, sigmas), s=(size, size))
  noise -= noise.mean(axis=(1, 2), keepdims=True)
  return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-12)


def _pixel_grid(size):
  """Returns the pixel-centre coordinates ``(yy, xx)``, each [S, S] float64."""
  coords = np.arange(size, dtype=np.float64)
  return np.meshgrid(coords, coords, indexing="ij")


def _to_uint8(image):
  """Clips a float image to [0, 1] and converts it to uint8."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
