"""``cityscapes_like``: an RGB street scene with a 6-class label map and a black-box-style cue.

The ambiguity comes from stochastic label flips (sidewalk, vegetation and car may be relabelled to
synonym classes) that the input pipeline applies later, giving 8 modes with known probabilities
(see `flip_modes`). `generate_cityscapes_like` draws one example. Pure NumPy/SciPy.
"""

import numpy as np
from scipy import ndimage

from .common import REFERENCE_SIZE, _smooth_noise, _to_uint8

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
