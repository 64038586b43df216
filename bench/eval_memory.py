"""Peak resident memory of the streaming evaluation at Cityscapes size, at 50 and 500 images.

Prints one JSON line. Each size runs in its own process (peak RSS is per process):
`evaluate_lib.evaluate_model` with a tiny, untrained Probabilistic U-Net (channels 4, 8; 24
classes) sampling 16 samples per image from a fake Cityscapes-size test split generated batch by
batch (256x512 RGB images, uint8 labels with void, the 32 flip modes weighted by their
probabilities, `bench.ged.cityscapes_like`), scoring every measure of `metrics.json` (GED, HM-IoU,
S_NCC from the probabilities, diversity, mode statistics, flip rates, ECE) for n = 1, 4, 8, 16.
Fields: `eval_peak_rss_gb_50`, `eval_peak_rss_gb_500`, `eval_rss_growth_500_over_50` (ratio),
`eval_s_per_image_500`; targets: at most 3 GB at 500 images and at most 10% above 50 images.

Usage: python bench/eval_memory.py [--sizes 50,500] [--batch 1]
       python bench/eval_memory.py --images N   (one child run: prints its own JSON line)
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.common import emit, machine, peak_rss_gb  # noqa: E402

HEIGHT, WIDTH, SAMPLES, COUNTS = 256, 512, 16, (1, 4, 8, 16)


def fake_batches(images, batch, seed=0):
  """Evaluation batches as `input_pipeline.eval_dataset` yields them, generated on the fly."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from bench.ged import cityscapes_like  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for lo in range(0, images, batch):
    b = min(batch, images - lo)
    _, modes, probs = cityscapes_like(rng, b, 1, HEIGHT, WIDTH)
    weights = probs.astype(np.float32)
    yield {"image": rng.random((b, HEIGHT, WIDTH, 3), np.float32), "references": modes,
           "reference_weights": weights, "modes": modes, "mode_probs": weights,
           "label": modes[:, 0], "id": np.array([str(lo + k).encode() for k in range(b)])}


def child(images, batch):
  from bench.ged import CITY_CLASSES, CITY_FLIPS  # pylint: disable=g-import-not-at-top
  from tf_prob_unet import evaluate_lib  # pylint: disable=g-import-not-at-top
  from tf_prob_unet import input_pipeline  # pylint: disable=g-import-not-at-top
  from tf_prob_unet import models  # pylint: disable=g-import-not-at-top
  spec = input_pipeline.DatasetSpec(
      kind="flips", num_classes=24, image_shape=(HEIGHT, WIDTH, 3), has_modes=True,
      flips=CITY_FLIPS, num_base_classes=19, class_ids=tuple(CITY_CLASSES),
      mode_names=tuple(str(m) for m in range(32)))
  model = models.get_model_class("prob_unet")(num_classes=24, channels=(4, 8),
                                              convs_per_block=1)
  model(_zero_images(batch))  # build
  start = time.time()
  result, _ = evaluate_lib.evaluate_model(model, fake_batches(images, batch), spec, COUNTS)
  seconds = time.time() - start
  assert result["num_images"] == images
  print(json.dumps({"images": images, "peak_rss_gb": peak_rss_gb(),
                    "s_per_image": seconds / images, "ged16": result["ged"]["16"]}))


def _zero_images(batch):
  """A batch of blank images, to build the model."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.zeros((batch, HEIGHT, WIDTH, 3), np.float32)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="50,500")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--images", type=int, default=0, help="internal: one child run")
  args = parser.parse_args()
  if args.images:
    child(args.images, args.batch)
    return
  runs = {}
  for images in (int(n) for n in args.sizes.split(",")):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--images={images}",
                           f"--batch={args.batch}"], capture_output=True, text=True,
                          env=dict(os.environ), cwd=os.path.dirname(HERE))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
      raise SystemExit(f"error: the {images}-image run failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
    runs[images] = json.loads(lines[-1])
  record = {f"eval_peak_rss_gb_{n}": round(r["peak_rss_gb"], 3) for n, r in runs.items()}
  record.update({f"eval_s_per_image_{n}": round(r["s_per_image"], 3) for n, r in runs.items()})
  sizes = sorted(runs)
  if len(sizes) >= 2:
    record[f"eval_rss_growth_{sizes[-1]}_over_{sizes[0]}"] = round(
        runs[sizes[-1]]["peak_rss_gb"] / runs[sizes[0]]["peak_rss_gb"], 3)
  emit({
      **record,
      "config": {"size": [HEIGHT, WIDTH], "modes": 32, "weighted": True, "samples": SAMPLES,
                 "num_samples": list(COUNTS), "classes": 24, "batch": args.batch,
                 "model": "prob_unet, channels (4, 8), 1 conv per block, untrained",
                 "labels": "uint8"},
      **machine(),
      "targets": {"eval_peak_rss_gb_500": "<= 3", "eval_rss_growth_500_over_50": "<= 1.1"},
  })


if __name__ == "__main__":
  main()
