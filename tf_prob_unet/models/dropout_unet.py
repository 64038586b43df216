"""The Dropout U-Net baseline: Monte-Carlo dropout in the innermost blocks (Kendall et al. style)."""

import keras
import tensorflow as tf

from tf_prob_unet.models import common
from tf_prob_unet.models.unet import UNetWithHeads


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class DropoutUNet(UNetWithHeads):
  """The U-Net with dropout on the incoming activations of its innermost blocks.

  Dropout (rate `dropout_rate`, 0.5 in the paper) acts on the inputs of the `dropout_levels`
  innermost encoder blocks and the `dropout_levels` innermost decoder blocks (3 and 3 in the
  paper). It is active in training and when sampling (Monte-Carlo dropout: each sample is one
  forward pass with its own masks) and off in the deterministic prediction `call`. With a seed the
  masks are a function of it (stateless RNG), so seeded samples repeat.

  Args: those of `UNetWithHeads` except `num_heads`, plus `dropout_rate` and `dropout_levels`.
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               head_channels=None, num_head_hidden=3, weight_decay=1e-5, ignore_index=255,
               upsample_mode="align_corners", seed=0, dropout_rate=0.5, dropout_levels=3,
               **kwargs):
    if not 0.0 < float(dropout_rate) < 1.0 or int(dropout_levels) < 1:
      raise ValueError(f"DropoutUNet: expected 0 < dropout_rate < 1 and dropout_levels >= 1, "
                       f"found dropout_rate={dropout_rate}, dropout_levels={dropout_levels}.")
    super().__init__(num_classes=num_classes, channels=channels,
                     convs_per_block=convs_per_block, head_channels=head_channels,
                     num_head_hidden=num_head_hidden, weight_decay=weight_decay,
                     ignore_index=ignore_index, upsample_mode=upsample_mode, seed=seed,
                     dropout_rate=dropout_rate, dropout_levels=dropout_levels, **kwargs)
    self.dropout_rate = float(dropout_rate)
    self.dropout_levels = int(dropout_levels)

  def sample_logits(self, images, num_samples=1, seed=None):
    """Logits of `num_samples` forward passes with dropout on, `[B, M, H, W, K]`.

    The image batch is repeated M times and run as one batch: every copy draws its own masks.
    """
    shape = tf.shape(images)
    repeated = tf.repeat(images, num_samples, axis=0)
    logits = self.head_logits(repeated, training=True, dropout_seed=common.as_seed(seed))[:, 0]
    return tf.reshape(logits, tf.concat([[shape[0], num_samples], tf.shape(logits)[1:]], 0))

  def get_config(self):
    config = super().get_config()
    config.update(dropout_rate=self.dropout_rate, dropout_levels=self.dropout_levels)
    return config
