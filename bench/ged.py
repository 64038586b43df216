"""Benchmark of `tf_prob_unet.metrics.ged` against a per-pair NumPy loop.

Binary 128x128 masks (random disks: a shared centre per image, jittered per mask, some masks
empty), 16 samples and 4 graders per image. Prints one JSON line:
`ged_images_per_s`, `loop_images_per_s`, `ged_speedup_over_loop`, `seconds_for_2000_images`
(extrapolated from the vectorised rate), `config`, `cores`, `date` (and the other machine
facts of `bench.common.machine`). Times are medians of wall-clock runs (single process).

Usage: python bench/ged.py [--images 200] [--loop-images 20] [--repeats 7]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, machine, timeit  # noqa: E402
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
      "config": {"images": args.images, "loop_images": n_loop, "samples": args.samples,
                 "graders": args.graders, "size": [args.size, args.size], "binary": True,
                 "masks": "random disks, 10% empty", "repeats": args.repeats,
                 "loop_repeats": args.loop_repeats, "timer": "median wall clock",
                 "seed": args.seed, "numpy": np.__version__,
                 "max_abs_diff_vs_loop": max_abs_diff},
      **machine(),
  })


if __name__ == "__main__":
  main()
