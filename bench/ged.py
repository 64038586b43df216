"""Benchmark of `tf_prob_unet.metrics.ged` against a per-pair NumPy loop, at two sizes.

LIDC size: binary 128x128 masks (random disks: a shared centre per image, jittered per mask,
some masks empty), 16 samples and 4 graders per image. Cityscapes size: 256x512 label maps
with 24 classes (19 base classes in 16x16 blocks, void on the top rows), the 32 flip modes
weighted by their probabilities, 16 samples drawn from the modes with blocky disagreements, the
10 switchable classes evaluated. Prints one JSON line: `ged_images_per_s`, `loop_images_per_s`,
`ged_speedup_over_loop`, `seconds_for_2000_images` (extrapolated from the vectorised rate),
`ged_cityscapes_s_per_image`, `ged_cityscapes_loop_s_per_image` (the per-pair loop on the same
images, timed in the same run, interleaved), `ged_cityscapes_speedup_over_loop`,
`ged_cityscapes_pixel_noise_s_per_image` (the same images with 1% of each sample's pixels
relabelled at random: far fewer repeated pixel columns, the case the distinct-column counting
gains least on), `config`, `cores`, `date` (and the other machine facts of
`bench.common.machine`). Times are medians of wall-clock runs (single process).

Usage: python bench/ged.py [--images 200] [--loop-images 20] [--repeats 7]
       [--city-images 8] [--city-loop-images 1]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, machine, timeit, timeit_interleaved  # noqa: E402
from tf_prob_unet import metrics  # noqa: E402


def random_blobs(rng, images, masks, size, empty_prob=0.1):
  """`[images, masks, size, size]` uint8 binary masks: jittered disks around a shared centre."""
  out = np.zeros((images, masks, size, size), np.uint8)
  yy, xx = np.mgrid[:size, :size].astype(np.float32)
  centre = rng.uniform(0.3 * size, 0.7 * size, (images, 1, 2))
  radius = rng.uniform(0.05 * size, 0.2 * size, (images, 1))
  centres = centre + rng.normal(0.0, 0.04 * size, (images, masks, 2))
  radii = radius * rng.uniform(0.7, 1.3, (images, masks))
  radii[rng.random((images, masks)) < empty_prob] = -1.0
  for i in range(images):
    dy = yy[None] - centres[i, :, 0, None, None]
    dx = xx[None] - centres[i, :, 1, None, None]
    out[i] = (dy * dy + dx * dx) <= (radii[i, :, None, None] ** 2)
  return out


# Cityscapes' switchable classes: (class, flipped class, flip probability).
CITY_FLIPS = ((1, 19, 8 / 17), (11, 20, 7 / 17), (13, 21, 6 / 17), (8, 22, 5 / 17),
              (0, 23, 4 / 17))
CITY_CLASSES = sorted({c for f in CITY_FLIPS for c in f[:2]})
VOID = 255


def cityscapes_like(rng, images, samples, height=256, width=512, cell=16, noise_cell=8,
                    noise=0.05):
  """Cityscapes-size flip data: `(samples [B, S, H, W], modes [B, 32, H, W], probs [B, 32])`.

  Labels are uint8: 19 base classes in `cell`-pixel blocks (road, building and vegetation more
  frequent), void (255) on the top 8 rows; the 32 modes flip each switchable class or not; each
  sample is a mode drawn by probability with `noise` of its `noise_cell` blocks relabelled at
  random (disagreements with spatial extent, as a model's samples have).
  """
  freq = np.ones(19)
  freq[[0, 2, 8, 10, 1]] = [12, 6, 5, 3, 2]
  grid = rng.choice(19, (images, height // cell, width // cell), p=freq / freq.sum())
  label = np.repeat(np.repeat(grid, cell, 1), cell, 2).astype(np.uint8)
  label[:, :8, :] = VOID
  bits = (np.arange(32)[:, None] >> np.arange(4, -1, -1)[None]) & 1
  flip_p = np.array([f[2] for f in CITY_FLIPS])
  probs = np.prod(np.where(bits == 1, flip_p, 1 - flip_p), axis=1)
  modes = np.repeat(label[:, None], 32, axis=1)
  for k, (c, c2, _) in enumerate(CITY_FLIPS):
    flipped = modes[:, bits[:, k] == 1]
    flipped[flipped == c] = c2
    modes[:, bits[:, k] == 1] = flipped
  pick = np.stack([rng.choice(32, samples, p=probs) for _ in range(images)])
  out = np.take_along_axis(modes, pick[:, :, None, None], axis=1)
  out[out == VOID] = 0
  hit = rng.random((images, samples, height // noise_cell, width // noise_cell)) < noise
  value = rng.integers(0, 24, hit.shape)
  up = lambda a: np.repeat(np.repeat(a, noise_cell, 2), noise_cell, 3)  # noqa: E731
  out = np.where(up(hit), up(value), out).astype(np.uint8)
  return out, modes, np.broadcast_to(probs, (images, 32)).copy()


def _class_distance(m1, m2, classes, valid):
  """1 - nanmean over `classes` of the per-class IoU of two label maps on `valid` pixels."""
  ious = []
  for c in classes:
    a = (m1 == c) & valid
    b = (m2 == c) & valid
    union = np.logical_or(a, b).sum()
    if union:
      ious.append(np.logical_and(a, b).sum() / union)
  return 1.0 - np.mean(ious) if ious else np.nan


def loop_ged_weighted(samples, modes, probs, classes):
  """Per-image, per-pair GED against weighted modes (V-statistic, void from the modes)."""
  out = np.empty(samples.shape[0])
  for k in range(samples.shape[0]):
    s, y, w = samples[k], modes[k], probs[k]
    valid = ~np.any(y == VOID, axis=0)
    d_sy = np.array([[_class_distance(a, b, classes, valid) for b in y] for a in s])
    d_ss = np.array([[_class_distance(a, b, classes, valid) for b in s] for a in s])
    d_yy = np.array([[_class_distance(a, b, classes, valid) for b in y] for a in y])
    out[k] = (2 * np.mean(d_sy @ w) - np.mean(d_ss) - w @ d_yy @ w)
  return out


def _pair_distance(m1, m2):
  """1 - foreground IoU of two label maps; two empty masks give 0."""
  a = m1 == 1
  b = m2 == 1
  union = np.logical_or(a, b).sum()
  if union == 0:
    return 0.0
  return 1.0 - np.logical_and(a, b).sum() / union


def loop_ged(samples, references):
  """Straightforward per-image, per-pair GED (V-statistic, uniform weights)."""
  out = np.empty(samples.shape[0])
  for k in range(samples.shape[0]):
    s, y = samples[k], references[k]
    d_sy = np.mean([_pair_distance(a, b) for a in s for b in y])
    d_ss = np.mean([_pair_distance(a, b) for a in s for b in s])
    d_yy = np.mean([_pair_distance(a, b) for a in y for b in y])
    out[k] = 2 * d_sy - d_ss - d_yy
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=200)
  parser.add_argument("--loop-images", type=int, default=20)
  parser.add_argument("--samples", type=int, default=16)
  parser.add_argument("--graders", type=int, default=4)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--loop-repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--city-images", type=int, default=8)
  parser.add_argument("--city-loop-images", type=int, default=1)
  args = parser.parse_args()

  rng = np.random.default_rng(args.seed)
  samples = random_blobs(rng, args.images, args.samples, args.size)
  references = random_blobs(rng, args.images, args.graders, args.size)

  n_loop = min(args.loop_images, args.images)
  vec = metrics.ged(samples, references)
  ref = loop_ged(samples[:n_loop], references[:n_loop])
  max_abs_diff = float(np.max(np.abs(vec[:n_loop] - ref)))
  if max_abs_diff > 1e-9:
    raise SystemExit(f"vectorised and loop GED disagree (max abs diff {max_abs_diff})")

  # Cityscapes size: the vectorised GED and the per-pair loop, interleaved in the same run.
  city_s, city_y, city_p = cityscapes_like(rng, args.city_images, args.samples)
  kw = dict(num_classes=24, class_ids=CITY_CLASSES, ignore_index=VOID)
  n_city_loop = min(args.city_loop_images, args.city_images)
  city_vec = metrics.ged(city_s, city_y, city_p, **kw)
  city_ref = loop_ged_weighted(city_s[:n_city_loop], city_y[:n_city_loop], city_p[:n_city_loop],
                               CITY_CLASSES)
  city_diff = float(np.max(np.abs(city_vec[:n_city_loop] - city_ref)))
  if city_diff > 1e-9:
    raise SystemExit(f"vectorised and loop GED disagree at Cityscapes size (max abs diff "
                     f"{city_diff})")
  city_times = timeit_interleaved(
      {"vec": lambda: metrics.ged(city_s, city_y, city_p, **kw),
       "loop": lambda: loop_ged_weighted(city_s[:n_city_loop], city_y[:n_city_loop],
                                         city_p[:n_city_loop], CITY_CLASSES)},
      repeats=args.loop_repeats, warmup=0)
  city_rate = city_times["vec"] / args.city_images
  hit = rng.random(city_s.shape) < 0.01
  noisy_s = np.where(hit, rng.integers(0, 24, city_s.shape), city_s).astype(np.uint8)
  noisy_diff = float(np.abs(metrics.ged(noisy_s[:1], city_y[:1], city_p[:1], **kw)
                            - loop_ged_weighted(noisy_s[:1], city_y[:1], city_p[:1],
                                                CITY_CLASSES)).max())
  if noisy_diff > 1e-9:
    raise SystemExit(f"vectorised and loop GED disagree with pixel noise (max abs diff "
                     f"{noisy_diff})")
  noisy_rate = timeit(lambda: metrics.ged(noisy_s, city_y, city_p, **kw),
                      repeats=args.loop_repeats, warmup=1) / args.city_images
  city_loop_rate = city_times["loop"] / n_city_loop

  t_vec = timeit(lambda: metrics.ged(samples, references), repeats=args.repeats, warmup=1)
  t_loop = timeit(lambda: loop_ged(samples[:n_loop], references[:n_loop]),
                  repeats=args.loop_repeats, warmup=0)
  ged_rate = args.images / t_vec
  loop_rate = n_loop / t_loop
  emit({
      "ged_images_per_s": round(ged_rate, 1),
      "loop_images_per_s": round(loop_rate, 2),
      "ged_speedup_over_loop": round(ged_rate / loop_rate, 1),
      "seconds_for_2000_images": round(2000 / ged_rate, 3),
      "ged_cityscapes_s_per_image": round(city_rate, 4),
      "ged_cityscapes_loop_s_per_image": round(city_loop_rate, 3),
      "ged_cityscapes_speedup_over_loop": round(city_loop_rate / city_rate, 1),
      "ged_cityscapes_pixel_noise_s_per_image": round(noisy_rate, 4),
      "targets": {"ged_cityscapes_s_per_image": "<= 0.05"},
      "config": {"images": args.images, "loop_images": n_loop, "samples": args.samples,
                 "graders": args.graders, "size": [args.size, args.size], "binary": True,
                 "masks": "random disks, 10% empty", "repeats": args.repeats,
                 "loop_repeats": args.loop_repeats, "timer": "median wall clock",
                 "seed": args.seed, "numpy": np.__version__,
                 "max_abs_diff_vs_loop": max_abs_diff,
                 "cityscapes": {"images": args.city_images, "loop_images": n_city_loop,
                                "size": [256, 512], "modes": 32, "weighted": True,
                                "classes": 24, "evaluated_classes": CITY_CLASSES,
                                "samples": args.samples, "max_abs_diff_vs_loop": city_diff,
                                "pixel_noise": 0.01,
                                "pixel_noise_max_abs_diff_vs_loop": noisy_diff}},
      **machine(),
  })


if __name__ == "__main__":
  main()
