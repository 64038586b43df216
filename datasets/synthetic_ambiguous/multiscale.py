"""``multiscale``: a grey-scale lesion whose segmentation is ambiguous at two scales.

A global choice (is the lesion marked at all) and four independent local choices (is each of four
boundary parts included): 17 modes with exact probabilities that follow from what the image
shows (`generate_multiscale`). It renders and draws graders as `lidc_like` does. Pure NumPy/SciPy.
"""

import numpy as np

from .common import REFERENCE_SIZE, _pixel_grid
from .lidc_like import (BORDER_MARGIN, CONTRAST_RANGE, _blob_masks, _blob_max_radius, _draw_blob,
                        _grader_example, _unit)

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
