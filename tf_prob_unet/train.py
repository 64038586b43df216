r"""Trains a model: `python -m tf_prob_unet.train --flagfile=synthetic.flags`.

A thin absl main: flags -> `train_lib.TrainConfig` -> `train_lib.run`. Bad flags stop with one
line naming the flag, what was expected and what was found.
"""

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_prob_unet import runtime  # noqa: E402  (imports no TensorFlow)

if __name__ == "__main__":
  runtime.prepare_process()  # oneDNN on, tcmalloc/jemalloc preloaded, before TensorFlow loads

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from tf_prob_unet import train_lib  # noqa: E402

_D = train_lib.TrainConfig()
_HELP = {
    "model": "Model name: prob_unet | unet | dropout_unet | unet_ensemble | m_heads | "
             "image2image_vae.",
    "dataset": "TFDS dataset NAME/CONFIG, e.g. synthetic_ambiguous/lidc_like.",
    "data_dir": "TFDS data directory (empty: TFDS's default ~/tensorflow_datasets).",
    "model_dir": "Run directory: checkpoints, summaries, flags.cfg. An existing run resumes.",
    "train_steps": "Total optimizer steps.",
    "batch_size": "Global batch size (split over replicas).",
    "strategy": "default | mirrored | multi_worker_mirrored.",
    "seed": "Seed of initialisation, data order and latent draws.",
    "channels": "Channels per U-Net level, e.g. 32,64,128,192.",
    "convs_per_block": "3x3 convolutions per block.",
    "latent_dim": "Latent size N.",
    "fcomb_channels": "f_comb hidden channels (0: channels[0]); also the baselines' heads'.",
    "num_fcomb_hidden": "Hidden 1x1 convolutions of f_comb; also of the baselines' heads.",
    "upsample_mode": "align_corners (reference) | half_pixel.",
    "log_sigma_bound": "Soft bound on |log sigma| of prior and posterior (0: none).",
    "beta": "Weight of the KL term (--objective=elbo; GECO weighs the KL by 1).",
    "kl_estimate": "analytic | sampled.",
    "weight_decay": "Reference weight decay: coefficient of sum(w^2)/2 over kernels.",
    "objective": "Latent models' objective: elbo (rec + beta * KL) | geco (lambda * C + KL, "
                 "the Hierarchical Probabilistic U-Net release's GECO; beta is not used).",
    "geco_kappa": "GECO: CE target per top-k selected pixel (release: 0.05).",
    "geco_decay": "GECO: decay of the moving average of the reconstruction (release: 0.99).",
    "geco_rate": "GECO: gradient scale of the Lagrange multiplier, negated for ascent "
                 "(release: 0.01; under Adam only its sign matters).",
    "top_k": "GECO reconstruction: stochastic (Gumbel top-k, probability grows with the CE) | "
             "deterministic (the largest CEs) | off (every valid pixel).",
    "top_k_percentage": "GECO reconstruction: fraction of the batch's pixels selected "
                        "(release: 0.02).",
    "dropout_rate": "dropout_unet: dropout rate of the innermost blocks (paper: 0.5).",
    "dropout_levels": "dropout_unet: innermost encoder and decoder blocks with dropout (paper: 3).",
    "ensemble_size": "unet_ensemble: K members, one sample each (paper: 4, 8, 16).",
    "ensemble_member_batch": "unet_ensemble: shared (each member sees the whole batch, as in "
                             "the paper) | split (member k trains on the k-th slice).",
    "num_heads": "m_heads: M heads, one sample each (paper: 4, 8, 16).",
    "m_heads_epsilon": "m_heads: total weight of the non-best heads (paper: 0.05).",
    "lr_values": "Piecewise-constant learning rates.",
    "lr_boundaries": "Steps where the learning rate changes.",
    "checkpoint_every": "Steps between checkpoints.",
    "keep_checkpoints": "Checkpoints kept.",
    "summary_every": "Steps between TensorBoard scalar summaries.",
    "log_every": "Steps between console progress lines.",
    "eval_every": "Steps between validation terms and sample grids.",
    "eval_batches": "Validation batches (of 4) per evaluation.",
    "shuffle_buffer": "Examples in the shuffle buffer.",
    "augment": "Augment the training examples as the reference's Cityscapes pipeline: mirror, "
               "elastic deformation, rotation, scaling, crop, gamma (docs/training.md).",
    "debug_nan_step": "Testing only: make the images of this 1-based step NaN, to exercise the "
                      "non-finite guard, which names the loss terms or the gradient norm that "
                      "became non-finite (0: off).",
}


def _define_flags():
  for field in dataclasses.fields(train_lib.TrainConfig):
    default = getattr(_D, field.name)
    help_ = _HELP[field.name]
    if isinstance(default, bool):
      flags.DEFINE_bool(field.name, default, help_)
    elif isinstance(default, int):
      flags.DEFINE_integer(field.name, default, help_)
    elif isinstance(default, float):
      flags.DEFINE_float(field.name, default, help_)
    elif isinstance(default, tuple):
      if all(isinstance(v, int) for v in default):
        flags.DEFINE_list(field.name, [str(v) for v in default], help_)
      else:
        flags.DEFINE_list(field.name, [repr(v) for v in default], help_)
    else:
      flags.DEFINE_string(field.name, default, help_)


_define_flags()
FLAGS = flags.FLAGS


def config_from_flags(flag_values):
  """A `TrainConfig` from parsed flags; list flags are converted to the field's element type."""
  values = {}
  for field in dataclasses.fields(train_lib.TrainConfig):
    value = flag_values[field.name].value
    default = getattr(_D, field.name)
    if isinstance(default, tuple):
      kind = int if all(isinstance(v, int) for v in default) else float
      try:
        value = tuple(kind(v) for v in value)
      except ValueError:
        raise ValueError(f"--{field.name}: expected a comma-separated list of {kind.__name__}, "
                         f"found {','.join(value)!r}.") from None
    values[field.name] = value
  return train_lib.TrainConfig(**values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    config = config_from_flags(FLAGS)
    train_lib.run(config)
  except (ValueError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_main():
  app.run(main)


if __name__ == "__main__":
  run_main()
