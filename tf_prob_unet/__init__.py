"""tf_prob_unet: the Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TF2 / Keras 3 / TFP."""

__version__ = "0.1.0"
