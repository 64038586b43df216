"""The U-Net encoder: one ConvBlock per level, average pooling between levels."""

import keras
import tensorflow as tf

from tf_prob_unet.layers.conv_block import ConvBlock


def fold_seed(seed, index):
  """A `[2]` seed derived from `seed` and `index` (None stays None): one stream per block."""
  if seed is None:
    return None
  return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), index)


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class Encoder(keras.layers.Layer):
  """The contracting path shared by the U-Net and the prior/posterior nets.

  Level 0 runs at full resolution; every later level starts with a 2x2 average pool.

  Args:
    channels: channels per level, e.g. (32, 64, 128, 192).
    convs_per_block: convolutions per block (3 in the reference).
    weight_decay: reference weight-decay coefficient.
    dropout_rate: dropout on the incoming activations of the `dropout_levels` innermost blocks.
    dropout_levels: how many of the innermost blocks get dropout (3 for the Dropout U-Net).

  Input shape: `[B, H, W, C]`. Output: a list with one `[B, H / 2^l, W / 2^l, channels[l]]`
  tensor per level `l`.
  """

  def __init__(self, channels, convs_per_block=3, weight_decay=1e-5, dropout_rate=0.0,
               dropout_levels=0, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(int(c) for c in channels)
    if not self.channels:
      raise ValueError("Encoder: `channels` must list at least one level, found ().")
    self.convs_per_block = int(convs_per_block)
    self.weight_decay = float(weight_decay)
    self.dropout_rate = float(dropout_rate)
    self.dropout_levels = int(dropout_levels)

  def build(self, input_shape):
    shape = tuple(input_shape)
    self.blocks = []
    n = len(self.channels)
    for level, filters in enumerate(self.channels):
      rate = self.dropout_rate if level >= n - self.dropout_levels else 0.0
      block = ConvBlock(filters, self.convs_per_block, pool=level > 0, dropout_rate=rate,
                        weight_decay=self.weight_decay, name=f"block_{level}")
      block.build(shape)
      shape = block.compute_output_shape(shape)
      self.blocks.append(block)

  def call(self, inputs, training=False, dropout_seed=None):
    """Features of every level; `dropout_seed` (`[2]` int) makes the dropout masks repeatable."""
    features = []
    x = inputs
    for level, block in enumerate(self.blocks):
      x = block(x, training=training, dropout_seed=fold_seed(dropout_seed, level))
      features.append(x)
    return features

  def compute_output_shape(self, input_shape):
    shapes = []
    shape = tuple(input_shape)
    for level, filters in enumerate(self.channels):
      b, h, w, _ = shape
      if level > 0:
        h = None if h is None else (h + 1) // 2
        w = None if w is None else (w + 1) // 2
      shape = (b, h, w, filters)
      shapes.append(shape)
    return shapes

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), convs_per_block=self.convs_per_block,
                  weight_decay=self.weight_decay, dropout_rate=self.dropout_rate,
                  dropout_levels=self.dropout_levels)
    return config
