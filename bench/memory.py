"""Peak resident memory of a real training run at batch 32 and 128x128.

Prints one JSON line. Runs `train_lib.run` (the train binary's library: data pipeline, model,
Adam, checkpoint, validation) for a few steps of the Probabilistic U-Net with the reference LIDC
channels (32, 64, 128, 192) on `synthetic_ambiguous/lidc_like_128`, then reads the process's peak
resident set size (`peak_rss_gb_batch32`, target under 8 GB).

Usage: python bench/memory.py [--steps 3] [--batch 32] [--data_dir runs/data]
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import emit, machine, peak_rss_gb  # noqa: E402
from tf_prob_unet import train_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--data_dir", default="runs/data")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as model_dir:
    config = train_lib.TrainConfig(
        model="prob_unet", dataset="synthetic_ambiguous/lidc_like_128", data_dir=args.data_dir,
        model_dir=model_dir, train_steps=args.steps, batch_size=args.batch,
        channels=(32, 64, 128, 192), convs_per_block=3, checkpoint_every=args.steps,
        eval_every=args.steps, summary_every=1, log_every=1, eval_batches=1)
    result = train_lib.run(config, log=lambda msg: print(msg, file=sys.stderr, flush=True))
  emit({
      "config": {"model": "prob_unet", "dataset": config.dataset, "batch": args.batch,
                 "size": 128, "channels": list(config.channels), "steps": result["step"]},
      **machine(),
      "peak_rss_gb_batch32": peak_rss_gb(),
      "targets": {"peak_rss_gb_batch32": "< 8"},
  })


if __name__ == "__main__":
  main()
