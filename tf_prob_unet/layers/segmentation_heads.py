"""Per-pixel classifier heads of the baselines: M parallel stacks of 1x1 convolutions."""

import keras
import tensorflow as tf

from tf_prob_unet.layers import initializers


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class SegmentationHeads(keras.layers.Layer):
  """`num_heads` parallel heads `num_hidden x (1x1 conv, channels, ReLU) -> 1x1 conv to logits`.

  The baselines' counterpart of f_comb without a latent: with the same `channels` and
  `num_hidden` a baseline's classifier has the Probabilistic U-Net's f_comb, less the latent
  input, so the models differ only in how they produce diversity. One head is the plain U-Net's
  classifier; M heads are the M-Heads baseline's branches (each with its own weights), computed
  together as batched 1x1 convolutions. As in f_comb, the hidden kernels carry the weight decay
  and the logits kernels do not.

  Args:
    num_classes: logits channels K.
    channels: channels of the hidden 1x1 convolutions.
    num_hidden: hidden 1x1 convolutions per head (0: a single 1x1 logits conv).
    num_heads: M, independent heads.
    weight_decay: reference weight-decay coefficient of the hidden kernels.

  Input shape: `[B, H, W, C]` features. Output shape: `[B, M, H, W, K]` logits.
  """

  def __init__(self, num_classes, channels=32, num_hidden=3, num_heads=1, weight_decay=1e-5,
               **kwargs):
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)
    self.channels = int(channels)
    self.num_hidden = int(num_hidden)
    self.num_heads = int(num_heads)
    if self.num_heads < 1 or self.num_hidden < 0:
      raise ValueError(f"SegmentationHeads: expected num_heads >= 1 and num_hidden >= 0, found "
                       f"num_heads={num_heads}, num_hidden={num_hidden}.")
    self.weight_decay = float(weight_decay)

  def build(self, input_shape):
    in_channels = int(input_shape[-1])
    # self.heads[m] is the list of Dense layers (1x1 convs) of head m, logits last.
    self.heads = []
    for m in range(self.num_heads):
      layers, width = [], in_channels
      for i in range(self.num_hidden):
        dense = keras.layers.Dense(
            self.channels, kernel_initializer=initializers.kernel_initializer(),
            bias_initializer=initializers.bias_initializer(),
            kernel_regularizer=initializers.kernel_regularizer(self.weight_decay),
            name=f"head_{m}_hidden_{i}")
        dense.build((None, width))
        width = self.channels
        layers.append(dense)
      logits = keras.layers.Dense(
          self.num_classes, kernel_initializer=initializers.kernel_initializer(),
          bias_initializer=initializers.bias_initializer(), name=f"head_{m}_logits")
      logits.build((None, width))
      layers.append(logits)
      self.heads.append(layers)

  def _stacked(self, depth):
    """Kernels `[M, C_in, C_out]` and biases `[M, 1, 1, 1, C_out]` of every head at `depth`."""
    kernels = tf.stack([tf.convert_to_tensor(h[depth].kernel) for h in self.heads])
    biases = tf.stack([tf.convert_to_tensor(h[depth].bias) for h in self.heads])
    return kernels, biases[:, tf.newaxis, tf.newaxis, tf.newaxis]

  def call(self, features):
    kernels, biases = self._stacked(0)
    x = tf.einsum("bhwc,mcd->mbhwd", features, kernels) + biases
    for depth in range(1, self.num_hidden + 1):
      x = tf.nn.relu(x)
      kernels, biases = self._stacked(depth)
      x = tf.einsum("mbhwc,mcd->mbhwd", x, kernels) + biases
    return tf.transpose(x, [1, 0, 2, 3, 4])

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    return (b, self.num_heads, h, w, self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, channels=self.channels,
                  num_hidden=self.num_hidden, num_heads=self.num_heads,
                  weight_decay=self.weight_decay)
    return config
