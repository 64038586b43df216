"""The baselines' per-pixel classifier: hidden 1x1 convolutions, then M heads of logits."""

import keras
import tensorflow as tf

from tf_prob_unet.layers import initializers


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class SegmentationHeads(keras.layers.Layer):
  """`num_hidden x (1x1 conv, channels, ReLU)`, then `num_heads` 1x1 convs to logits.

  The baselines' counterpart of f_comb without a latent: with the same `channels` and
  `num_hidden` a baseline's classifier is the Probabilistic U-Net's f_comb less the latent
  input, so the models differ only in how they produce diversity. With one head this is the plain
  U-Net's classifier; with M heads the network branches after its last layer into M logits convs
  (the M-Heads baseline; each head has its own kernel and bias). As in f_comb, the hidden kernels
  carry the weight decay and the logits kernels do not.

  Args:
    num_classes: logits channels K.
    channels: channels of the hidden 1x1 convolutions.
    num_hidden: hidden 1x1 convolutions (0: the heads act on the features directly).
    num_heads: M, the number of logits convs.
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
    width = int(input_shape[-1])
    self.hidden = []
    for i in range(self.num_hidden):
      dense = initializers.dense(self.channels, self.weight_decay, "relu", f"hidden_{i}")
      dense.build((None, width))
      width = self.channels
      self.hidden.append(dense)
    # The M heads' kernels side by side, `[C, M * K]`: head m owns columns [m K, (m + 1) K).
    # He-normal's fan-in is C either way, so each head is initialised as a conv of its own.
    self.logits = initializers.dense(self.num_heads * self.num_classes, name="logits")
    self.logits.build((None, width))

  def call(self, features):
    x = features
    for dense in self.hidden:
      x = dense(x)
    logits = self.logits(x)
    shape = tf.shape(logits)
    logits = tf.reshape(logits, tf.concat([shape[:3], [self.num_heads, self.num_classes]], 0))
    return tf.transpose(logits, [0, 3, 1, 2, 4])

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    return (b, self.num_heads, h, w, self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, channels=self.channels,
                  num_hidden=self.num_hidden, num_heads=self.num_heads,
                  weight_decay=self.weight_decay)
    return config
