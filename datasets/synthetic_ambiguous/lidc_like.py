"""``lidc_like``: a grey-scale "CT patch" with one or two lesions whose segmentation is ambiguous.

Four segmentation modes (empty, tight, wide, rare) are defined exactly for every image, and the
probability of each mode is a known function of what the image shows (lesion contrast, halo and
tail visibility). Four "graders" draw their mask i.i.d. from that distribution
(`generate_lidc_like`). Pure NumPy/SciPy.
"""

import numpy as np
from scipy import ndimage

from .common import REFERENCE_SIZE, _pixel_grid, _smooth_noise, _to_uint8

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
