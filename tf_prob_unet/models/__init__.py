"""Models behind one registry: `--model=NAME` maps to a constructor."""

import inspect

from tf_prob_unet.models.common import SegmentationModel
from tf_prob_unet.models.dropout_unet import DropoutUNet
from tf_prob_unet.models.hprob_unet import HierarchicalProbUNet
from tf_prob_unet.models.image2image_vae import Image2ImageVAE
from tf_prob_unet.models.m_heads import MHeads
from tf_prob_unet.models.prob_unet import ProbUNet
from tf_prob_unet.models.unet import DeterministicUNet
from tf_prob_unet.models.unet_ensemble import UNetEnsemble

MODELS = {
    "prob_unet": ProbUNet,
    "hprob_unet": HierarchicalProbUNet,
    "unet": DeterministicUNet,
    "dropout_unet": DropoutUNet,
    "unet_ensemble": UNetEnsemble,
    "m_heads": MHeads,
    "image2image_vae": Image2ImageVAE,
}


def get_model_class(name):
  """The model class registered under `name` (the train binary's `--model`)."""
  if name not in MODELS:
    raise ValueError(f"--model: expected one of {sorted(MODELS)}, found {name!r}.")
  return MODELS[name]


__all__ = ["MODELS", "DeterministicUNet", "DropoutUNet", "HierarchicalProbUNet", "Image2ImageVAE",
           "MHeads", "ProbUNet", "UNetEnsemble", "SegmentationModel", "get_model_class"]


def filter_kwargs(name, kwargs):
  """The subset of `kwargs` that the constructor of model `name` accepts."""
  params = inspect.signature(get_model_class(name).__init__).parameters
  return {k: v for k, v in kwargs.items() if k in params}
