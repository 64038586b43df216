"""A block of 3x3 convolutions with ReLU, optionally preceded by 2x2 average pooling."""

import keras
import tensorflow as tf

from tf_prob_unet.layers import initializers
from tf_prob_unet.layers import shifted_conv2d


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ConvBlock(keras.layers.Layer):
  """`[avg-pool 2x2] -> [dropout] -> num_convs x (3x3 conv, SAME, bias, ReLU)`.

  The reference's U-Net block (REFERENCE.md 1.2): He-normal kernels, truncated-normal biases, L2
  weight decay on kernels only.

  Args:
    filters: output channels of every convolution.
    num_convs: convolutions in the block (3 in the reference).
    pool: if True, a 2x2 average pool with stride 2 (SAME padding) comes first.
    dropout_rate: dropout on the block's incoming activations (0 disables). Used by the Dropout
      U-Net baseline; it is active whenever `training=True` is passed, so Monte-Carlo sampling
      passes `training=True`. With a `dropout_seed` (call argument, a `[2]` int tensor) the mask
      is a function of the seed (stateless RNG), otherwise Keras' seed generator draws it.
    weight_decay: reference weight-decay coefficient (`weight_decay * sum(w^2) / 2`).

  Input shape: `[B, H, W, C]`. Output shape: `[B, H', W', filters]` with `H' = ceil(H / 2)` when
  pooling, else `H`.
  """

  def __init__(self, filters, num_convs=3, pool=False, dropout_rate=0.0, weight_decay=1e-5,
               **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.num_convs = int(num_convs)
    self.pool = bool(pool)
    self.dropout_rate = float(dropout_rate)
    self.weight_decay = float(weight_decay)

  def build(self, input_shape):
    shape = tuple(input_shape)
    self.pool_layer = None
    if self.pool:
      self.pool_layer = keras.layers.AveragePooling2D(2, strides=2, padding="same", name="pool")
      self.pool_layer.build(shape)
      shape = self.pool_layer.compute_output_shape(shape)
    self.dropout_layer = None
    if self.dropout_rate > 0:
      self.dropout_layer = keras.layers.Dropout(self.dropout_rate, name="dropout")
    self.convs = []
    for i in range(self.num_convs):
      conv = shifted_conv2d.ShiftedConv2D(
          self.filters, 3, padding="same", activation="relu",
          kernel_initializer=initializers.kernel_initializer(),
          bias_initializer=initializers.bias_initializer(),
          kernel_regularizer=initializers.kernel_regularizer(self.weight_decay),
          name=f"conv_{i}")
      conv.build(shape)
      shape = conv.compute_output_shape(shape)
      self.convs.append(conv)

  def call(self, inputs, training=False, dropout_seed=None):
    x = inputs
    if self.pool_layer is not None:
      x = self.pool_layer(x)
    if self.dropout_layer is not None:
      if training and dropout_seed is not None:
        x = tf.nn.experimental.stateless_dropout(x, self.dropout_rate, seed=dropout_seed)
      else:
        x = self.dropout_layer(x, training=training)
    for conv in self.convs:
      x = conv(x, training=training)
    return x

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    if self.pool:
      h = None if h is None else (h + 1) // 2
      w = None if w is None else (w + 1) // 2
    return (b, h, w, self.filters)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, num_convs=self.num_convs, pool=self.pool,
                  dropout_rate=self.dropout_rate, weight_decay=self.weight_decay)
    return config
