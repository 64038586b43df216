"""Models behind one registry: `--model=NAME` maps to a constructor."""

import inspect

from tf_prob_unet.models.common import SegmentationModel
from tf_prob_unet.models.prob_unet import ProbUNet
from tf_prob_unet.models.unet import DeterministicUNet

MODELS = {
    "prob_unet": ProbUNet,
    "unet": DeterministicUNet,
}


def get_model_class(name):
  """The model class registered under `name` (the train binary's `--model`)."""
  if name not in MODELS:
    raise ValueError(f"--model: expected one of {sorted(MODELS)}, found {name!r}.")
  return MODELS[name]


__all__ = ["MODELS", "DeterministicUNet", "ProbUNet", "SegmentationModel", "get_model_class"]


def filter_kwargs(name, kwargs):
  """The subset of `kwargs` that the constructor of model `name` accepts."""
  params = inspect.signature(get_model_class(name).__init__).parameters
  return {k: v for k, v in kwargs.items() if k in params}
