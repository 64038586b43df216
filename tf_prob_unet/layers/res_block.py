"""The Hierarchical Probabilistic U-Net's pre-activation residual block and its resampling."""

import keras
import tensorflow as tf

from tf_prob_unet.layers import initializers
from tf_prob_unet.layers import shifted_conv2d


def orthogonal_conv(filters, kernel_size, weight_decay=0.0, name=None):
  """A SAME convolution with the HPU release's initialisers and weight decay.

  Kernels are orthogonal (gain 1, the release's `tf.orthogonal_initializer`), biases truncated
  normal with standard deviation 1e-3. The release registers an L2 term on kernels *and* biases;
  here `weight_decay * sum(w ** 2) / 2` on both (the house's convention: the release's
  `l2(1e-5)` is `weight_decay=2e-5`).

  Args:
    filters: output channels.
    kernel_size: 1 or 3.
    weight_decay: coefficient (0: none).
    name: layer name.
  """
  regularizer = initializers.kernel_regularizer(weight_decay)
  # 3x3: the house's convolution with faster training gradients (same forward pass and weights).
  layer = shifted_conv2d.ShiftedConv2D if kernel_size == 3 else keras.layers.Conv2D
  return layer(
      filters, kernel_size, padding="same",
      kernel_initializer=keras.initializers.Orthogonal(gain=1.0),
      bias_initializer=initializers.bias_initializer(), kernel_regularizer=regularizer,
      bias_regularizer=regularizer, name=name)


def downsample(x):
  """2x2 average pooling with stride 2, VALID: `[B, H, W, C] -> [B, H / 2, W / 2, C]`."""
  return tf.nn.avg_pool2d(x, 2, 2, "VALID")


def upsample(x):
  """Nearest-neighbour x2: every pixel repeated 2x2, `[B, h, w, C] -> [B, 2h, 2w, C]`.

  Equals the release's TF1 `resize(NEAREST_NEIGHBOR, align_corners=True)` for an exact x2
  (REFERENCE_HPU 1.1); TF2's half-pixel nearest resize is the same repetition.
  """
  size = tf.shape(x)[1:3] * 2
  return tf.image.resize(x, size, method="nearest")


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ResBlock(keras.layers.Layer):
  """Pre-activation residual block of the HPU release (`unet_utils.res_block`).

  `r = ReLU(x)`, then `num_convs` 3x3 convolutions to `bottleneck_filters` channels with ReLU
  between them (not after the last), a 1x1 convolution of `r` to `filters` where the two differ;
  the skip is `x`, or a 1x1 convolution of `x` where its channels differ from `filters`. Output
  `skip + r`. No normalisation.

  Args:
    filters: output channels n.
    bottleneck_filters: channels d of the 3x3 convolutions (None: `filters // 2`, as in the
      release where d = n / 2; the release takes d from its default channel list whatever list
      is passed, and as floats, here it always comes from `filters`).
    num_convs: 3x3 convolutions (3 in the release).
    weight_decay: see `orthogonal_conv`.

  Input shape: `[B, H, W, C]`. Output shape: `[B, H, W, filters]`.
  """

  def __init__(self, filters, bottleneck_filters=None, num_convs=3, weight_decay=2e-5,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.bottleneck_filters = (None if bottleneck_filters is None
                               else int(bottleneck_filters))
    self.num_convs = int(num_convs)
    if self.filters < 1 or self.num_convs < 1 or self.inner_filters < 1:
      raise ValueError(f"ResBlock: expected filters >= 2 (or bottleneck_filters >= 1) and "
                       f"num_convs >= 1, found filters={filters}, bottleneck_filters="
                       f"{bottleneck_filters}, num_convs={num_convs}.")
    self.weight_decay = float(weight_decay)

  @property
  def inner_filters(self):
    return self.bottleneck_filters if self.bottleneck_filters is not None else self.filters // 2

  def build(self, input_shape):
    in_channels = int(input_shape[-1])
    shape = tuple(input_shape[:3])
    self.convs = []
    channels = in_channels
    for i in range(self.num_convs):
      conv = orthogonal_conv(self.inner_filters, 3, self.weight_decay, f"conv_{i}")
      conv.build(shape + (channels,))
      channels = self.inner_filters
      self.convs.append(conv)
    self.output_projection = None
    if self.inner_filters != self.filters:
      self.output_projection = orthogonal_conv(self.filters, 1, self.weight_decay,
                                               "output_projection")
      self.output_projection.build(shape + (self.inner_filters,))
    self.skip_projection = None
    if in_channels != self.filters:
      self.skip_projection = orthogonal_conv(self.filters, 1, self.weight_decay,
                                             "skip_projection")
      self.skip_projection.build(shape + (in_channels,))

  def call(self, inputs, training=False):
    r = tf.nn.relu(inputs)
    for i, conv in enumerate(self.convs):
      if i:
        r = tf.nn.relu(r)
      r = conv(r, training=training)
    if self.output_projection is not None:
      r = self.output_projection(r, training=training)
    skip = inputs if self.skip_projection is None else self.skip_projection(
        inputs, training=training)
    return skip + r

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:3]) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, bottleneck_filters=self.bottleneck_filters,
                  num_convs=self.num_convs, weight_decay=self.weight_decay)
    return config
