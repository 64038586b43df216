"""Synthetic ambiguous-segmentation dataset with an exactly known distribution.

Three kinds of examples are generated procedurally (no download):

* ``lidc_like``: a grey-scale "CT patch" with one or two lesions whose
  segmentation is ambiguous. Four segmentation modes (empty, tight, wide,
  rare) are defined exactly for every image, and the probability of each mode
  is a known function of what the image shows (lesion contrast, halo and tail
  visibility). Four "graders" draw their mask i.i.d. from that distribution.
* ``cityscapes_like``: an RGB street scene with a 6-class label map and a
  black-box-style predicted label map (the "cue"). The ambiguity comes from
  stochastic label flips (sidewalk, vegetation and car may be relabelled to
  synonym classes) that the input pipeline applies later, giving 8 modes with
  known probabilities (see `flip_modes`).
* ``multiscale``: a grey-scale lesion whose segmentation is ambiguous at two
  scales: a global choice (is the lesion marked at all) and four independent
  local choices (is each of four boundary parts included), 17 modes with exact
  probabilities that follow from what the image shows.

All generation logic is pure NumPy/SciPy in module-level functions, so it can
be used without TFDS. Each example depends only on ``(seed, split, index)``
through `example_rng`, so generation is deterministic and order-independent.

This module is meant to be loaded by file path (it has no relative imports and
does not import ``tf_prob_unet``).
"""

import dataclasses
import functools

import numpy as np
from scipy import ndimage
import tensorflow_datasets as tfds

# -----------------------------------------------------------------------------
# Common.
# -----------------------------------------------------------------------------

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


# -----------------------------------------------------------------------------
# lidc_like: binary lesions with four segmentation modes.
# -----------------------------------------------------------------------------

NUM_GRADERS = 4
LIDC_MODE_NAMES = ("empty", "tight", "wide", "rare")
MODE_EMPTY, MODE_TIGHT, MODE_WIDE, MODE_RARE = range(4)

# Appearance parameters, drawn uniformly per image (intensities in [0, 1]).
BACKGROUND_LEVEL = 0.35
BACKGROUND_LOW_STD = 0.035  # Texture at a coarse scale.
BACKGROUND_LOW_SIGMA = 8.0
BACKGROUND_MID_STD = 0.02  # Texture at a finer scale.
BACKGROUND_MID_SIGMA = 2.0
PIXEL_NOISE_STD = 0.03
EDGE_BLUR_SIGMA = 0.6  # Softens the lesion edges.
CONTRAST_RANGE = (0.08, 0.5)  # c: core brightness above background.
HALO_RANGE = (0.0, 0.25)  # h: halo brightness above background.
TAIL_RANGE = (0.06, 0.25)  # t: tail brightness above background.

# Geometry (lengths in pixels for 64x64 images).
RADIUS_RANGE = (5.0, 8.0)  # Main lesion mean radius r.
HARMONICS = (2, 3, 4)  # Angular harmonics perturbing the blob boundary.
HARMONIC_MAX_AMPLITUDES = (0.09, 0.06, 0.04)  # Relative to r; sum < 0.2.
WIDE_SCALE = 1.7  # Wide outline = core blob scaled about its centre.
SECOND_LESION_PROB = 0.4
SECOND_RADIUS_FRACTION = (0.45, 0.6)  # Second lesion radius / r.
LESION_GAP = 2.0  # Minimum gap between the second lesion and the main one.
BORDER_MARGIN = 2.0  # Minimum gap between any structure and the border.
TAIL_MIN_LENGTH = 2.2  # Relative to r.
TAIL_ASPECT = 3.0  # Tail ellipse length / width.
TAIL_AREA_FRACTION = 0.85  # Tail area / total tight-mask area (at least).
TAIL_OVERLAP = 0.15  # The tail starts this far (relative to r) inside the core.
# After rasterisation the tail is stretched (in steps, while it fits) until the
# rare mode adds at least TAIL_MIN_EXTRA times the tight mask's pixel count.
TAIL_MIN_EXTRA = 0.7
TAIL_STRETCH_STEP = 0.05
TAIL_MAX_STRETCH_STEPS = 8

# Mode probabilities (see `lidc_mode_probs`).
P_RARE_BASE, P_RARE_SLOPE = 0.04, 0.06
P_EMPTY_BASE, P_EMPTY_SLOPE = 0.04, 0.36
P_WIDE_BASE, P_WIDE_SLOPE = 0.15, 0.7


def _unit(value, value_range):
  """Maps `value` from `value_range` linearly to [0, 1] (clipped)."""
  low, high = value_range
  return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def lidc_mode_probs(contrast, halo, tail):
  """Exact mode probabilities of a lidc_like image.

  With ``cn``, ``hn``, ``tn`` the contrast, halo and tail intensities mapped
  linearly from `CONTRAST_RANGE`, `HALO_RANGE`, `TAIL_RANGE` to [0, 1]::

    p_rare  = 0.04 + 0.06 * tn
    p_empty = 0.04 + 0.36 * (1 - cn)
    rest    = 1 - p_rare - p_empty
    p_wide  = rest * (0.15 + 0.7 * hn)
    p_tight = rest - p_wide

  Args:
    contrast: float, core intensity above background (c).
    halo: float, halo intensity above background (h).
    tail: float, tail intensity above background (t).

  Returns:
    float64 array [4]: probabilities of (empty, tight, wide, rare); sums to 1.
  """
  cn = _unit(contrast, CONTRAST_RANGE)
  hn = _unit(halo, HALO_RANGE)
  tn = _unit(tail, TAIL_RANGE)
  p_rare = P_RARE_BASE + P_RARE_SLOPE * tn
  p_empty = P_EMPTY_BASE + P_EMPTY_SLOPE * (1.0 - cn)
  rest = 1.0 - p_rare - p_empty
  p_wide = rest * (P_WIDE_BASE + P_WIDE_SLOPE * hn)
  p_tight = rest - p_wide
  return np.array([p_empty, p_tight, p_wide, p_rare], dtype=np.float64)


def _draw_blob(rng, radius):
  """Draws the shape of an irregular blob (centre set later).

  Args:
    rng: `np.random.Generator`.
    radius: float, mean radius in pixels.

  Returns:
    dict with "radius", "amplitudes" [H] and "phases" [H] (H harmonics).
  """
  amplitudes = rng.uniform(0.0, 1.0, len(HARMONICS)) * np.array(
      HARMONIC_MAX_AMPLITUDES)
  phases = rng.uniform(0.0, 2.0 * np.pi, len(HARMONICS))
  return {"radius": radius, "amplitudes": amplitudes, "phases": phases}


def _boundary_radius(blob, theta):
  """Radius of the blob boundary at angle(s) `theta` (any shape)."""
  perturbation = np.zeros_like(np.asarray(theta, dtype=np.float64))
  for harmonic, amplitude, phase in zip(HARMONICS, blob["amplitudes"],
                                        blob["phases"]):
    perturbation = perturbation + amplitude * np.cos(harmonic * theta + phase)
  return blob["radius"] * (1.0 + perturbation)


def _blob_max_radius(blob):
  """Upper bound of the boundary radius of `blob`."""
  return blob["radius"] * (1.0 + float(np.sum(blob["amplitudes"])))


def _blob_area(blob):
  """Exact area of the (continuous) blob: pi r^2 (1 + sum(a_j^2) / 2)."""
  return np.pi * blob["radius"]**2 * (
      1.0 + 0.5 * float(np.sum(blob["amplitudes"]**2)))


def _blob_masks(blob, center, size, scales):
  """Rasterises the blob scaled by each of `scales` about its centre.

  Only the bounding window of the largest scale is evaluated.

  Args:
    blob: dict from `_draw_blob`.
    center: (y, x) centre in pixels.
    size: int, image size S.
    scales: sequence of float scale factors.

  Returns:
    list of bool arrays [S, S], one per scale.
  """
  extent = max(scales) * _blob_max_radius(blob) + 1.0
  y0 = int(max(0, np.floor(center[0] - extent)))
  y1 = int(min(size, np.ceil(center[0] + extent) + 1))
  x0 = int(max(0, np.floor(center[1] - extent)))
  x1 = int(min(size, np.ceil(center[1] + extent) + 1))
  dy = (np.arange(y0, y1) - center[0])[:, None]
  dx = (np.arange(x0, x1) - center[1])[None, :]
  rho = np.hypot(dy, dx)
  boundary = _boundary_radius(blob, np.arctan2(dy, dx))
  masks = []
  for scale in scales:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = rho <= scale * boundary
    masks.append(mask)
  return masks


def _tail_geometry(blob, direction, tight_area, stretch=1.0):
  """Tail ellipse relative to the lesion centre.

  The tail is an ellipse with aspect ratio `TAIL_ASPECT` whose length is at
  least `TAIL_MIN_LENGTH` r and whose area is at least `TAIL_AREA_FRACTION`
  times the area of all tight cores, so that the rare mode differs clearly
  from the tight mode. It starts just inside the core boundary and points
  along `direction`.

  Args:
    blob: dict from `_draw_blob` (the main lesion).
    direction: float, angle of the tail axis (radians, x right, y down).
    tight_area: float, total area of the tight cores in pixels.
    stretch: float, extra factor applied to the length and width.

  Returns:
    dict with "offset" (y, x) of the ellipse centre relative to the lesion
    centre, "direction", "half_length" and "half_width".
  """
  radius = blob["radius"]
  length = max(TAIL_MIN_LENGTH * radius,
               np.sqrt(4.0 * TAIL_ASPECT * TAIL_AREA_FRACTION * tight_area /
                       np.pi)) * stretch
  start = float(_boundary_radius(blob, direction)) - TAIL_OVERLAP * radius
  distance = start + 0.5 * length
  return {
      "offset": (distance * np.sin(direction), distance * np.cos(direction)),
      "direction": direction,
      "half_length": 0.5 * length,
      "half_width": 0.5 * length / TAIL_ASPECT,
  }


def _tail_half_extent(tail):
  """Half-sizes (y, x) of the axis-aligned bounding box of the tail ellipse."""
  cos, sin = np.cos(tail["direction"]), np.sin(tail["direction"])
  a, b = tail["half_length"], tail["half_width"]
  return (np.sqrt((a * sin)**2 + (b * cos)**2),
          np.sqrt((a * cos)**2 + (b * sin)**2))


def _tail_fits(tail, center, size, margin):
  """Whether the tail's bounding box is at least `margin` from the border."""
  for axis, half in enumerate(_tail_half_extent(tail)):
    middle = center[axis] + tail["offset"][axis]
    if middle - half < margin or middle + half > size - 1 - margin:
      return False
  return True


def _tail_mask(tail, center, yy, xx):
  """Rasterises the tail ellipse of a lesion centred at `center`.

  Returns:
    bool array [S, S].
  """
  dy = yy - (center[0] + tail["offset"][0])
  dx = xx - (center[1] + tail["offset"][1])
  cos, sin = np.cos(tail["direction"]), np.sin(tail["direction"])
  along = dx * cos + dy * sin
  across = -dx * sin + dy * cos
  return ((along / tail["half_length"])**2 +
          (across / tail["half_width"])**2) <= 1.0


def _place_main_lesion(rng, size, blob, tail, margin):
  """Draws a centre such that the wide outline and the tail fit in the image.

  Returns:
    (y, x) centre in pixels.
  """
  wide_extent = WIDE_SCALE * _blob_max_radius(blob)
  half_y, half_x = _tail_half_extent(tail)
  center = []
  for axis, half in ((0, half_y), (1, half_x)):
    low_rel = min(-wide_extent, tail["offset"][axis] - half)
    high_rel = max(wide_extent, tail["offset"][axis] + half)
    low = margin - low_rel
    high = (size - 1) - margin - high_rel
    if high < low:  # Cannot happen with the default constants; be safe.
      low = high = 0.5 * (low + high)
    center.append(rng.uniform(low, high))
  return tuple(center)


def _place_second_lesion(rng, size, blob, occupied, margin, gap):
  """Draws a centre for the second lesion away from the `occupied` pixels.

  Args:
    rng: `np.random.Generator`.
    size: int, image size S.
    blob: dict from `_draw_blob` (the second lesion).
    occupied: bool [S, S], pixels of the main lesion (wide outline and tail).
    margin: float, minimum distance to the image border.
    gap: float, minimum gap between the wide outlines.

  Returns:
    (y, x) centre, or None if the lesion does not fit anywhere.
  """
  extent = WIDE_SCALE * _blob_max_radius(blob)
  distance = ndimage.distance_transform_edt(~occupied)
  coords = np.arange(size)
  inside = (coords >= margin + extent + 0.5) & (
      coords <= size - 1 - margin - extent - 0.5)
  valid = (distance > extent + gap + 1.5) & inside[:, None] & inside[None, :]
  candidates = np.flatnonzero(valid)
  if candidates.size == 0:
    return None
  flat = candidates[rng.integers(candidates.size)]
  jitter = rng.uniform(-0.5, 0.5, 2)
  return (flat // size + jitter[0], flat % size + jitter[1])


def generate_lidc_like(rng, size):
  """Generates one lidc_like example.

  The image shows a main lesion (core, halo ring and tail) and, with
  probability `SECOND_LESION_PROB`, a smaller second lesion with the same
  contrast and halo (no tail). The four modes, in the order of
  `LIDC_MODE_NAMES`, segment all lesions with the same style:

  * 0 "empty": nothing;
  * 1 "tight": the core blob(s);
  * 2 "wide": the core blob(s) scaled by `WIDE_SCALE` (core plus halo);
  * 3 "rare": the core blob(s) plus the main lesion's tail.

  Args:
    rng: `np.random.Generator` (e.g. from `example_rng`).
    size: int, image size S.

  Returns:
    dict with
      "image": uint8 [S, S, 1];
      "masks": uint8 [4, S, S], the graders' masks (values {0, 1});
      "modes": uint8 [4, S, S], the four mode masks (values {0, 1});
      "mode_probs": float32 [4], exact mode probabilities (sum to 1);
      "grader_modes": int32 [4], the mode drawn by each grader.
  """
  scale = size / REFERENCE_SIZE
  yy, xx = _pixel_grid(size)
  margin = BORDER_MARGIN * scale

  contrast = rng.uniform(*CONTRAST_RANGE)
  halo = rng.uniform(*HALO_RANGE)
  tail_level = rng.uniform(*TAIL_RANGE)

  main = _draw_blob(rng, rng.uniform(*RADIUS_RANGE) * scale)
  second = None
  if rng.uniform() < SECOND_LESION_PROB:
    second = _draw_blob(
        rng, main["radius"] * rng.uniform(*SECOND_RADIUS_FRACTION))
  direction = rng.uniform(0.0, 2.0 * np.pi)

  tight_area = _blob_area(main) + (
      _blob_area(second) if second is not None else 0.0)
  tail = _tail_geometry(main, direction, tight_area)
  main_center = _place_main_lesion(rng, size, main, tail, margin)
  core, wide = _blob_masks(main, main_center, size, (1.0, WIDE_SCALE))
  tail_mask = _tail_mask(tail, main_center, yy, xx)

  second_wide = np.zeros_like(wide)
  if second is not None:
    second_center = _place_second_lesion(
        rng, size, second, wide | tail_mask, margin, LESION_GAP * scale)
    if second_center is None:
      second = None
      # A shorter tail is contained in the longer one (same start and axis).
      tight_area = _blob_area(main)
      tail = _tail_geometry(main, direction, tight_area)
      tail_mask = _tail_mask(tail, main_center, yy, xx)
    else:
      second_core, second_wide = _blob_masks(
          second, second_center, size, (1.0, WIDE_SCALE))
      core |= second_core
      wide |= second_wide

  # Small rasterised tails can lose area: stretch the tail while it is too
  # small, stays inside the image and does not touch the second lesion.
  for step in range(1, TAIL_MAX_STRETCH_STEPS + 1):
    if (np.count_nonzero(tail_mask & ~core) >=
        TAIL_MIN_EXTRA * np.count_nonzero(core)):
      break
    stretched = _tail_geometry(main, direction, tight_area,
                               1.0 + TAIL_STRETCH_STEP * step)
    stretched_mask = _tail_mask(stretched, main_center, yy, xx)
    if (not _tail_fits(stretched, main_center, size, margin) or
        np.any(stretched_mask & second_wide)):
      break
    tail, tail_mask = stretched, stretched_mask

  modes = np.zeros((4, size, size), dtype=np.uint8)
  modes[MODE_TIGHT] = core
  modes[MODE_WIDE] = wide
  modes[MODE_RARE] = core | tail_mask

  # Image: textured background plus halo, tail and core intensities.
  offset = np.where(wide & ~core, halo, 0.0)
  offset = np.where(tail_mask, np.maximum(offset, tail_level), offset)
  offset = np.where(core, contrast, offset)
  return _grader_example(rng, offset, modes,
                         lidc_mode_probs(contrast, halo, tail_level))


def _grader_example(rng, offset, modes, probs):
  """A grey-scale example with graders: the image of `offset`, the graders' draws.

  The image is the textured background plus `offset` (blurred by
  `EDGE_BLUR_SIGMA`) plus pixel noise; the `NUM_GRADERS` graders draw their
  modes i.i.d. from `probs`.

  Args:
    rng: `np.random.Generator`.
    offset: float [S, S], brightness above the background.
    modes: uint8 [M, S, S], the mode masks.
    probs: float64 [M], the exact mode probabilities.

  Returns:
    dict with "image", "masks", "modes", "mode_probs", "grader_modes".
  """
  size = offset.shape[0]
  scale = size / REFERENCE_SIZE
  low, mid = _smooth_noise(
      rng, size, (BACKGROUND_LOW_SIGMA * scale, BACKGROUND_MID_SIGMA * scale))
  background = BACKGROUND_LEVEL + BACKGROUND_LOW_STD * low + (
      BACKGROUND_MID_STD * mid)
  offset = ndimage.gaussian_filter(offset, EDGE_BLUR_SIGMA * scale)
  image = (background + offset +
           PIXEL_NOISE_STD * rng.standard_normal((size, size)))
  grader_modes = rng.choice(len(probs), size=NUM_GRADERS,
                            p=probs).astype(np.int32)
  return {
      "image": _to_uint8(image)[..., None],
      "masks": modes[grader_modes],
      "modes": modes,
      "mode_probs": probs.astype(np.float32),
      "grader_modes": grader_modes,
  }


# -----------------------------------------------------------------------------
# multiscale: one global choice and several independent local choices.
# -----------------------------------------------------------------------------

MS_NUM_PARTS = 4  # Local choices: boundary sectors that each flip on their own.
MS_RADIUS_RANGE = (6.0, 9.0)  # Lesion mean radius r (pixels at 64x64).
MS_OUTER_SCALE = 1.6  # A part's outer outline = core blob scaled about its centre.
MS_PART_RANGE = (0.0, 0.25)  # h_j: brightness of part j above background.
# p_present = MS_PRESENT_BASE + MS_PRESENT_SLOPE * cn; q_j = MS_PART_BASE + MS_PART_SLOPE * hn_j.
MS_PRESENT_BASE, MS_PRESENT_SLOPE = 0.35, 0.6
MS_PART_BASE, MS_PART_SLOPE = 0.1, 0.8


def multiscale_mode_names(num_parts=MS_NUM_PARTS):
  """Names of the multiscale modes: "absent", then "lesion_<bits>" (bit j = part j marked)."""
  return ("absent",) + tuple(
      "lesion_" + "".join(str(b) for b in bits)
      for bits in _part_bits(num_parts))


def _part_bits(num_parts):
  """[2^L, L] int array: row i is the binary expansion of i, part 0 most significant."""
  index = np.arange(2**num_parts)[:, None]
  return (index >> np.arange(num_parts - 1, -1, -1)[None, :]) & 1


def multiscale_mode_probs(contrast, part_levels):
  """Exact mode probabilities of a multiscale image.

  The global choice: the lesion is marked with probability
  ``p_present = 0.35 + 0.6 * cn`` (cn: the contrast mapped linearly from
  `CONTRAST_RANGE` to [0, 1]). Given that it is marked, each part j is included
  independently with probability ``q_j = 0.1 + 0.8 * hn_j`` (hn_j: part j's
  brightness mapped from `MS_PART_RANGE`). Mode 0 ("absent") has probability
  ``1 - p_present``; mode ``1 + i`` (bits of i = the included parts, part 0 the
  most significant) has ``p_present * prod_j q_j^b_j (1 - q_j)^(1 - b_j)``.

  Args:
    contrast: float, core brightness above background (c).
    part_levels: [L] floats, each part's brightness above background (h_j).

  Returns:
    float64 array [1 + 2^L]; sums to 1.
  """
  cn = _unit(contrast, CONTRAST_RANGE)
  q = np.array([MS_PART_BASE + MS_PART_SLOPE * _unit(h, MS_PART_RANGE)
                for h in part_levels])
  p_present = MS_PRESENT_BASE + MS_PRESENT_SLOPE * cn
  bits = _part_bits(len(q))
  local = np.prod(np.where(bits == 1, q[None, :], 1.0 - q[None, :]), axis=1)
  return np.concatenate([[1.0 - p_present], p_present * local])


def generate_multiscale(rng, size):
  """Generates one multiscale example: a global and `MS_NUM_PARTS` local choices.

  The image shows one irregular lesion (the core blob, brightness c above the
  background) surrounded by `MS_NUM_PARTS` boundary parts: the ring between the
  core and the core scaled by `MS_OUTER_SCALE`, cut into equal angular sectors
  starting at a random angle, part j with its own brightness h_j. A rater first
  decides whether the lesion is marked at all (global), then, independently for
  each part, whether it belongs to the lesion (local). This gives 1 + 2^L modes
  (17 for L = 4), all with exact probabilities (`multiscale_mode_probs`):

  * 0 "absent": nothing;
  * 1 + i "lesion_<bits of i>": the core plus the parts whose bit is 1.

  Args:
    rng: `np.random.Generator` (e.g. from `example_rng`).
    size: int, image size S.

  Returns:
    The dict of `generate_lidc_like` ("image", "masks", "modes", "mode_probs",
    "grader_modes") with 1 + 2^L modes instead of 4.
  """
  scale = size / REFERENCE_SIZE
  yy, xx = _pixel_grid(size)
  margin = BORDER_MARGIN * scale

  contrast = rng.uniform(*CONTRAST_RANGE)
  part_levels = rng.uniform(*MS_PART_RANGE, size=MS_NUM_PARTS)
  blob = _draw_blob(rng, rng.uniform(*MS_RADIUS_RANGE) * scale)
  start = rng.uniform(0.0, 2.0 * np.pi)
  extent = MS_OUTER_SCALE * _blob_max_radius(blob) + margin
  center = rng.uniform(extent, size - 1 - extent, size=2)
  core, outer = _blob_masks(blob, center, size, (1.0, MS_OUTER_SCALE))
  sector = np.floor(np.mod(np.arctan2(yy - center[0], xx - center[1]) - start,
                           2.0 * np.pi) / (2.0 * np.pi / MS_NUM_PARTS))
  sector = np.minimum(sector.astype(np.int64), MS_NUM_PARTS - 1)
  ring = outer & ~core
  parts = [ring & (sector == j) for j in range(MS_NUM_PARTS)]

  bits = _part_bits(MS_NUM_PARTS)
  modes = np.zeros((1 + len(bits), size, size), dtype=np.uint8)
  for i, row in enumerate(bits):
    mask = core.copy()
    for j in np.flatnonzero(row):
      mask |= parts[j]
    modes[1 + i] = mask

  offset = np.zeros((size, size))
  for j in range(MS_NUM_PARTS):
    offset = np.where(parts[j], part_levels[j], offset)
  offset = np.where(core, contrast, offset)
  return _grader_example(rng, offset, modes,
                         multiscale_mode_probs(contrast, part_levels))


# -----------------------------------------------------------------------------
# cityscapes_like: street scenes with stochastic label flips.
# -----------------------------------------------------------------------------

ROAD, SIDEWALK, BUILDING, VEGETATION, CAR, SKY = range(6)
SIDEWALK_2, VEGETATION_2, CAR_2 = 6, 7, 8
VOID = 255
NUM_BASE_CLASSES = 6
NUM_CITY_CLASSES = 9
CITY_CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "car", "sky",
                    "sidewalk_2", "vegetation_2", "car_2")
# (original class, synonym class, flip probability); the order gives the mode
# bits from the most to the least significant.
FLIPS = ((SIDEWALK, SIDEWALK_2, 8.0 / 17.0),
         (VEGETATION, VEGETATION_2, 6.0 / 17.0),
         (CAR, CAR_2, 4.0 / 17.0))
MODE_BIT_ORDER = ("sidewalk", "vegetation", "car")
NUM_CITY_MODES = 2**len(FLIPS)

# Scene layout (fractions of the image size).
HORIZON_RANGE = (0.30, 0.45)
MIN_FLIP_CLASS_FRACTION = 0.025  # Each of sidewalk, vegetation, car.
MAX_SCENE_ATTEMPTS = 50
EGO_VEHICLE_PROB = 0.5

# Base colours (RGB in [0, 1]); jittered per image.
CITY_COLORS = {
    ROAD: (0.33, 0.32, 0.35),
    SIDEWALK: (0.66, 0.60, 0.54),
    BUILDING: (0.55, 0.40, 0.32),
    VEGETATION: (0.22, 0.46, 0.16),
    CAR: (0.16, 0.22, 0.58),
    SKY: (0.55, 0.72, 0.92),
}
COLOR_JITTER_STD = 0.035
VOID_COLOR = (0.08, 0.08, 0.09)

# Cue (predicted label map) errors.
CUE_WARP_STD = 1.1  # Std of the smooth displacement field (pixels at 64).
CUE_WARP_SIGMA = 4.0  # Smoothness of the displacement field.
CUE_BLOB_COUNT = (1, 4)  # [low, high) number of wrong-class blobs.
CUE_BLOB_RADIUS = (1.5, 3.5)
# Plausible confusions for the wrong-class blobs.
CUE_CONFUSION = {
    ROAD: SIDEWALK,
    SIDEWALK: ROAD,
    BUILDING: VEGETATION,
    VEGETATION: BUILDING,
    CAR: ROAD,
    SKY: BUILDING,
}


def city_mode_probs():
  """Probabilities of the 8 flip modes.

  Mode m is a 3-bit number; its bits from the most to the least significant
  tell whether sidewalk, vegetation and car are flipped. With flip
  probabilities p_k, ``P(m) = prod_k p_k^b_k (1 - p_k)^(1 - b_k)``.

  Returns:
    float64 array [8]; sums to 1.
  """
  probs = np.ones(NUM_CITY_MODES, dtype=np.float64)
  for mode in range(NUM_CITY_MODES):
    for bit_index, (_, _, flip_prob) in enumerate(FLIPS):
      bit = (mode >> (len(FLIPS) - 1 - bit_index)) & 1
      probs[mode] *= flip_prob if bit else 1.0 - flip_prob
  return probs


def flip_modes(label):
  """Builds the 8 flip modes of an unflipped label map.

  Args:
    label: uint8 [S, S] unflipped labels (values 0..5 and `VOID`).

  Returns:
    modes: uint8 [8, S, S]; mode m relabels the classes whose bit is set in m
      (bits from most to least significant: sidewalk, vegetation, car) to
      their synonym classes. Void stays `VOID`.
    probs: float64 [8], the probability of each mode (sums to 1).
  """
  label = np.asarray(label, dtype=np.uint8)
  modes = np.repeat(label[None], NUM_CITY_MODES, axis=0)
  for mode in range(NUM_CITY_MODES):
    for bit_index, (source, target, _) in enumerate(FLIPS):
      if (mode >> (len(FLIPS) - 1 - bit_index)) & 1:
        modes[mode][label == source] = target
  return modes, city_mode_probs()


def _star_blob(rng, size, center, radius, max_amplitude):
  """Rasterises an irregular blob with random low-frequency harmonics.

  Args:
    rng: `np.random.Generator`.
    size: int, image size S.
    center: (y, x) centre in pixels.
    radius: float, mean radius in pixels.
    max_amplitude: float, bound of the relative boundary perturbation.

  Returns:
    bool array [S, S].
  """
  amplitudes = rng.uniform(0.0, max_amplitude / 3.0, 3)
  phases = rng.uniform(0.0, 2.0 * np.pi, 3)
  extent = radius * (1.0 + max_amplitude) + 1.0
  y0 = int(np.clip(np.floor(center[0] - extent), 0, size))
  y1 = int(np.clip(np.ceil(center[0] + extent) + 1, 0, size))
  x0 = int(np.clip(np.floor(center[1] - extent), 0, size))
  x1 = int(np.clip(np.ceil(center[1] + extent) + 1, 0, size))
  mask = np.zeros((size, size), dtype=bool)
  if y1 <= y0 or x1 <= x0:
    return mask
  dy = (np.arange(y0, y1) - center[0])[:, None]
  dx = (np.arange(x0, x1) - center[1])[None, :]
  theta = np.arctan2(dy, dx)
  boundary = np.ones_like(theta)
  for harmonic, amplitude, phase in zip((2, 3, 5), amplitudes, phases):
    boundary += amplitude * np.cos(harmonic * theta + phase)
  mask[y0:y1, x0:x1] = np.hypot(dy, dx) <= radius * boundary
  return mask


def _rounded_rect(yy, xx, center, half_height, half_width, corner):
  """Rasterises an axis-aligned rectangle with rounded corners.

  Args:
    yy: [S, 1] (or [S, S]) y coordinates.
    xx: [1, S] (or [S, S]) x coordinates.
    center: (y, x) centre.
    half_height: float, half of the height.
    half_width: float, half of the width.
    corner: float, corner radius.

  Returns:
    bool array [S, S].
  """
  qy = np.maximum(np.abs(yy - center[0]) - (half_height - corner), 0.0)
  qx = np.maximum(np.abs(xx - center[1]) - (half_width - corner), 0.0)
  inside = (np.abs(yy - center[0]) <= half_height) & (
      np.abs(xx - center[1]) <= half_width)
  return inside & (qy**2 + qx**2 <= corner**2)


def _city_scene(rng, size):
  """Draws the label map of one street scene.

  Args:
    rng: `np.random.Generator`.
    size: int, image size S.

  Returns:
    label: uint8 [S, S] (values 0..5 and `VOID`).
    parts: dict of layout information used for rendering: "building_id" int
      [S, S] (index of the building column, -1 elsewhere), "car_id" int
      [S, S] (-1 where no car), "car_rows" float [N, 2] (top and bottom row
      of each car), "lane" bool [S, S] (road centre markings) and "horizon"
      float (row of the horizon).
  """
  rows = np.arange(size, dtype=np.float64)
  v = ((rows + 0.5) / size)[:, None]  # Normalised coordinates in (0, 1).
  u = ((rows + 0.5) / size)[None, :]
  horizon = rng.uniform(*HORIZON_RANGE)

  # Buildings: columns of random widths whose tops are above the horizon and
  # whose facades go down to the ground; sky above them.
  widths = []
  while sum(widths) < 1.0:
    widths.append(rng.uniform(0.08, 0.25))
  tops = horizon - rng.uniform(0.04, 0.28, len(widths))
  column = np.searchsorted(np.cumsum(widths), u[0], side="right")
  building = v >= tops[column][None, :]
  label = np.where(building, BUILDING, SKY).astype(np.uint8)
  building_id = np.where(building, column[None, :], -1)

  # Road: trapezoid from a vanishing point on the horizon to the bottom edge,
  # with a sidewalk strip on each side (all widths grow with the depth).
  depth = np.clip((v - horizon) / (1.0 - horizon), 0.0, 1.0)
  ground = v > horizon
  top_center = rng.uniform(0.4, 0.6)
  bottom_center = rng.uniform(0.42, 0.58)
  road_top, road_bottom = rng.uniform(0.015, 0.04), rng.uniform(0.28, 0.4)
  walk_top = rng.uniform(0.005, 0.02, 2)
  walk_bottom = rng.uniform(0.12, 0.2, 2)
  road_half = road_top + (road_bottom - road_top) * depth
  offset = u - (top_center + (bottom_center - top_center) * depth)
  road = ground & (np.abs(offset) <= road_half)
  sidewalk = ground & ~road & (
      offset >= -road_half - walk_top[0] - walk_bottom[0] * depth) & (
          offset <= road_half + walk_top[1] + walk_bottom[1] * depth)
  label[road] = ROAD
  label[sidewalk] = SIDEWALK
  # Dashed centre line (still road).
  lane = road & (np.abs(offset) <= 0.006 + 0.012 * depth) & (
      np.sin(18.0 / (0.15 + depth)) > 0.3)

  # Trees: irregular canopies beside the road (over facades and sidewalks),
  # each with a trunk below. They never cover the road.
  for _ in range(rng.integers(1, 4)):
    side = rng.choice([-1.0, 1.0])
    cv = horizon + rng.uniform(-0.12, 0.12)
    cdepth = np.clip((cv - horizon) / (1.0 - horizon), 0.0, 1.0)
    edge = (top_center + (bottom_center - top_center) * cdepth +
            side * (road_top + (road_bottom - road_top) * cdepth + 0.05))
    cu = edge + side * rng.uniform(0.0, 0.3)
    radius = rng.uniform(0.08, 0.14)
    canopy = _star_blob(rng, size, (cv * size - 0.5, cu * size - 0.5),
                        radius * size, 0.35)
    trunk = (np.abs(u - cu) <= 0.1 * radius) & (v >= cv) & (
        v <= cv + 1.8 * radius)
    label[(canopy | trunk) & ~road] = VEGETATION

  # Cars: rounded rectangles standing on the road, drawn from far to near.
  # The nearest car is in the lower part of the road.
  car_id = np.full((size, size), -1, dtype=np.int64)
  car_rows = []
  car_depths = np.sort(np.concatenate([
      rng.uniform(0.3, 0.95, rng.integers(0, 3)),
      rng.uniform(0.6, 0.95, 1)]))
  for car_depth in car_depths:
    bottom = horizon + car_depth * (1.0 - horizon)
    road_row = np.flatnonzero(road[min(int(bottom * size), size - 1)])
    if road_row.size == 0:
      continue
    road_left = (road_row[0] + 0.5) / size
    road_right = (road_row[-1] + 0.5) / size
    half_width = 0.5 * rng.uniform(0.35, 0.55) * (road_right - road_left)
    half_height = half_width * rng.uniform(0.55, 0.75)
    cu = rng.uniform(road_left + half_width, road_right - half_width)
    cv = bottom - half_height
    body = _rounded_rect(v, u, (cv, cu), half_height, half_width,
                         0.3 * half_height)
    label[body] = CAR
    car_id[body] = len(car_rows)
    car_rows.append(((cv - half_height) * size, (cv + half_height) * size))

  # Ego vehicle (void) at the bottom edge in some images.
  if rng.uniform() < EGO_VEHICLE_PROB:
    hood = rng.uniform(0.02, 0.06)
    hood_top = 1.0 - hood * (1.0 - 0.6 * ((u - 0.5) / 0.5)**2)
    label[np.broadcast_to(v >= hood_top, label.shape)] = VOID

  parts = {
      "building_id": building_id,
      "car_id": car_id,
      "car_rows": np.array(car_rows, dtype=np.float64).reshape(-1, 2),
      "lane": lane & (label == ROAD),
      "horizon": horizon * size,
  }
  return label, parts


def _render_city(rng, label, parts):
  """Renders the RGB image of a street scene.

  Each class has a base colour (jittered per image) and its own texture.
  Synonym classes are never rendered: flips are invisible by design.

  Args:
    rng: `np.random.Generator`.
    label: uint8 [S, S] unflipped labels.
    parts: dict from `_city_scene`.

  Returns:
    uint8 [S, S, 3] RGB image.
  """
  size = label.shape[0]
  scale = size / REFERENCE_SIZE
  yy = np.arange(size, dtype=np.float64)[:, None]
  xx = np.arange(size, dtype=np.float64)[None, :]
  palette = np.zeros((256, 3))
  for k, color in CITY_COLORS.items():
    palette[k] = np.array(color) + rng.normal(0.0, COLOR_JITTER_STD, 3)
  palette[VOID] = VOID_COLOR
  fine, blotchy = _smooth_noise(rng, size, (0.7 * scale, 1.5 * scale))
  color = palette[label]
  shade = np.ones((size, size))
  extra = np.zeros((size, size))  # Added to all channels.

  # Road: fine grain.
  road = label == ROAD
  shade = np.where(road, 1.0 + 0.05 * fine, shade)
  # Sidewalk: paving tiles.
  period = max(3.0, 4.0 * scale)
  tiles = (np.mod(yy, period) < 0.9) | (np.mod(xx, period) < 0.9)
  shade = np.where(label == SIDEWALK, 1.0 + 0.04 * fine - 0.12 * tiles, shade)
  # Buildings: one tint per building column, grids of windows.
  building = label == BUILDING
  building_id = parts["building_id"]
  tints = rng.normal(0.0, 0.06, (int(building_id.max()) + 1, 3))
  color += np.where(building[..., None], tints[np.maximum(building_id, 0)], 0.0)
  window_size = (max(4.0, 6.0 * scale), max(3.0, 5.0 * scale))
  window_phase = rng.uniform(0.0, 1.0, 2)
  windows = ((np.mod(yy / window_size[0] + window_phase[0], 1.0) < 0.45) &
             (np.mod(xx / window_size[1] + window_phase[1], 1.0) < 0.5))
  shade = np.where(building, np.where(windows, 0.55, 1.0) + 0.04 * fine, shade)
  # Vegetation: blotchy leaves.
  shade = np.where(label == VEGETATION, 1.0 + 0.3 * blotchy, shade)
  # Cars: per-car body colour, darker towards the bottom, dark rear window.
  car = label == CAR
  car_id = np.maximum(parts["car_id"], 0)
  car_rows = parts["car_rows"]
  if car_rows.shape[0]:
    car_tints = rng.normal(0.0, 0.04, (car_rows.shape[0], 3))
    color += np.where(car[..., None], car_tints[car_id], 0.0)
    rel = (yy - car_rows[car_id, 0]) / np.maximum(
        car_rows[car_id, 1] - car_rows[car_id, 0], 1.0)
    shade = np.where(car, 1.1 - 0.3 * rel, shade)
    window = car & (rel > 0.1) & (rel < 0.4)
    color[window] = 0.12
    shade[window] = 1.0
  # Sky: brighter towards the horizon.
  sky = label == SKY
  gradient = np.clip(yy / max(parts["horizon"], 1.0), 0.0, 1.0)
  extra = np.where(sky, 0.15 * gradient + 0.02 * blotchy, extra)
  # Void (ego vehicle).
  shade = np.where(label == VOID, 1.0 + 0.1 * fine, shade)

  image = color * shade[..., None] + extra[..., None]
  image[parts["lane"]] = 0.85
  image *= rng.uniform(0.85, 1.15)
  image = ndimage.gaussian_filter(image, (0.5 * scale, 0.5 * scale, 0.0))
  image += rng.normal(0.0, 0.02, image.shape)
  return _to_uint8(image)


def make_cue(rng, label):
  """Makes a black-box-style predicted label map from the true labels.

  Errors: a smooth random displacement of all class boundaries (pixels near a
  boundary take the neighbouring class) and a few small blobs of a plausible
  wrong class. Void pixels take the nearest non-void class. About 90% of the
  non-void pixels are correct.

  Args:
    rng: `np.random.Generator`.
    label: uint8 [S, S] unflipped labels (0..5 and `VOID`).

  Returns:
    uint8 [S, S] with values in 0..5.
  """
  size = label.shape[0]
  scale = size / REFERENCE_SIZE
  void = label == VOID
  filled = label
  if void.any():
    _, (iy, ix) = ndimage.distance_transform_edt(void, return_indices=True)
    filled = label[iy, ix]
  warp = CUE_WARP_STD * scale * _smooth_noise(
      rng, size, (CUE_WARP_SIGMA * scale,) * 2)
  coords = np.arange(size, dtype=np.float64)
  sy = np.clip(np.round(coords[:, None] + warp[0]), 0, size - 1)
  sx = np.clip(np.round(coords[None, :] + warp[1]), 0, size - 1)
  cue = filled[sy.astype(np.int64), sx.astype(np.int64)]
  for _ in range(rng.integers(*CUE_BLOB_COUNT)):
    cy, cx = rng.uniform(0, size - 1, 2)
    radius = rng.uniform(*CUE_BLOB_RADIUS) * scale
    blob = _star_blob(rng, size, (cy, cx), radius, 0.4)
    cue[blob] = CUE_CONFUSION[int(filled[int(round(cy)), int(round(cx))])]
  return cue.astype(np.uint8)


def generate_cityscapes_like(rng, size):
  """Generates one cityscapes_like example.

  The scene is redrawn (with the same generator) until sidewalk, vegetation
  and car each cover at least `MIN_FLIP_CLASS_FRACTION` of the pixels, so the
  8 flip modes are distinct.

  Args:
    rng: `np.random.Generator` (e.g. from `example_rng`).
    size: int, image size S.

  Returns:
    dict with
      "image": uint8 [S, S, 3] RGB;
      "label": uint8 [S, S] unflipped labels (0..5 and 255 = void);
      "cue": uint8 [S, S] predicted labels (0..5).
  """
  for _ in range(MAX_SCENE_ATTEMPTS):
    label, parts = _city_scene(rng, size)
    fractions = [np.mean(label == source) for source, _, _ in FLIPS]
    if min(fractions) >= MIN_FLIP_CLASS_FRACTION:
      break
  else:
    raise RuntimeError("Could not draw a scene with all flip classes.")
  image = _render_city(rng, label, parts)
  cue = make_cue(rng, label)
  return {"image": image, "label": label, "cue": cue}


# -----------------------------------------------------------------------------
# TFDS builder.
# -----------------------------------------------------------------------------

KINDS = ("lidc_like", "cityscapes_like", "multiscale")


@dataclasses.dataclass(eq=False)
class SyntheticAmbiguousConfig(tfds.core.BuilderConfig):
  """BuilderConfig of `synthetic_ambiguous`.

  Attributes:
    kind: "lidc_like", "cityscapes_like" or "multiscale".
    image_size: int, image height and width S.
    num_train: number of training examples.
    num_validation: number of validation examples.
    num_test: number of test examples.
    seed: int, base seed; example i of split k uses ``[seed, k, i]``.
  """

  kind: str = "lidc_like"
  image_size: int = 64
  num_train: int = 4000
  num_validation: int = 400
  num_test: int = 400
  seed: int = 0


def _configs():
  """Returns the list of predefined configs."""
  configs = []
  for kind in KINDS:
    configs.append(SyntheticAmbiguousConfig(
        name=kind, description=f"{kind}, 64x64 images.", kind=kind))
    configs.append(SyntheticAmbiguousConfig(
        name=f"{kind}_128", description=f"{kind}, 128x128 images.",
        kind=kind, image_size=128))
    configs.append(SyntheticAmbiguousConfig(
        name=f"{kind}_tiny",
        description=f"{kind}, 32x32 images, 40/8/8 examples (for tests).",
        kind=kind, image_size=32, num_train=40, num_validation=8, num_test=8))
  return configs


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic_ambiguous."""

  # Explicit, so the module can be loaded under any module name.
  name = "synthetic_ambiguous"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "lidc_like"
  # README.md and CITATIONS.bib sit next to this file. Setting the folder
  # explicitly lets the module be loaded by file path under any module name
  # (TFDS would otherwise look for them in the module's package).
  pkg_dir_path = tfds.core.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    """Returns the dataset metadata."""
    config = self.builder_config
    size = config.image_size
    zlib = tfds.features.Encoding.ZLIB
    if config.kind in ("lidc_like", "multiscale"):
      mode_names = (LIDC_MODE_NAMES if config.kind == "lidc_like" else
                    multiscale_mode_names())
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8),
          "masks": tfds.features.Tensor(
              shape=(NUM_GRADERS, size, size), dtype=np.uint8, encoding=zlib),
          "modes": tfds.features.Tensor(
              shape=(len(mode_names), size, size), dtype=np.uint8,
              encoding=zlib),
          "mode_probs": tfds.features.Tensor(
              shape=(len(mode_names),), dtype=np.float32),
          "grader_modes": tfds.features.Tensor(
              shape=(NUM_GRADERS,), dtype=np.int32),
          "id": tfds.features.Text(),
      })
      metadata = tfds.core.MetadataDict(
          num_classes=2, mode_names=list(mode_names))
    elif config.kind == "cityscapes_like":
      features = tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
          "label": tfds.features.Tensor(
              shape=(size, size), dtype=np.uint8, encoding=zlib),
          "cue": tfds.features.Tensor(
              shape=(size, size), dtype=np.uint8, encoding=zlib),
          "id": tfds.features.Text(),
      })
      metadata = tfds.core.MetadataDict(
          num_classes=NUM_CITY_CLASSES,
          num_base_classes=NUM_BASE_CLASSES,
          class_names=list(CITY_CLASS_NAMES),
          flips=[[source, target, prob] for source, target, prob in FLIPS],
          mode_bit_order=list(MODE_BIT_ORDER),
          void=VOID)
    else:
      raise ValueError(f"Unknown kind: {config.kind!r}")
    return self.dataset_info_from_configs(
        features=features,
        supervised_keys=None,
        homepage="https://arxiv.org/abs/1806.05034",
        metadata=metadata,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns the split generators (nothing is downloaded)."""
    del dl_manager  # Unused: the data is generated.
    config = self.builder_config
    return {
        "train": self._generate_examples("train", config.num_train),
        "validation": self._generate_examples(
            "validation", config.num_validation),
        "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split, num_examples):
    """Yields ``(key, example)`` for one split."""
    config = self.builder_config
    generate = {"lidc_like": generate_lidc_like,
                "cityscapes_like": generate_cityscapes_like,
                "multiscale": generate_multiscale}[config.kind]
    for index in range(num_examples):
      rng = example_rng(config.seed, split, index)
      example = generate(rng, config.image_size)
      key = f"{split}_{index:06d}"
      example["id"] = key
      yield key, example
