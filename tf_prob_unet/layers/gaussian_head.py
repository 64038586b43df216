"""The prior/posterior net: an encoder, global mean pooling and a 1x1 conv to (mu, log-sigma)."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_prob_unet.layers import initializers
from tf_prob_unet.layers.encoder import Encoder

tfd = tfp.distributions


def bound_log_sigma(raw, bound):
  """Soft-bounds log-sigma to (-bound, bound): `bound * tanh(raw / bound)`.

  The reference leaves log-sigma unclamped, and the PyTorch port's users report NaN KLs from it.
  The tanh bound is the identity to first order near 0 (|raw| << bound), smooth, and keeps sigma
  in (exp(-bound), exp(bound)); with the default bound 5 that is (0.0067, 148), wide enough for any
  prior or posterior seen in training while keeping 1 / sigma^2 in the KL finite in float32.
  """
  if not bound:
    return raw
  return bound * tf.tanh(raw / bound)


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class AxisAlignedConvGaussian(keras.layers.Layer):
  """The "axis-aligned conv Gaussian" of the paper: the prior net or the posterior net.

  Args:
    latent_dim: N, the latent size (6 in the paper).
    channels: encoder channels per level (same as the U-Net's).
    convs_per_block: convolutions per encoder block.
    weight_decay: reference weight-decay coefficient, applied to encoder kernels and the 1x1 conv.
    log_sigma_bound: soft bound on |log sigma| (see `bound_log_sigma`); 0 disables it.

  Input shape: `[B, H, W, C]` (the image for the prior; image concatenated with
  `one_hot(label) - 0.5` for the posterior).

  Returns:
    `call` returns a `tfd.MultivariateNormalDiag` with batch shape `[B]` and event shape `[N]`.
    `params` returns the tensors `(mu, log_sigma)`, each `[B, N]` (for exports and functional
    graphs, which must not carry distributions).
  """

  def __init__(self, latent_dim=6, channels=(32, 64, 128, 192), convs_per_block=3,
               weight_decay=1e-5, log_sigma_bound=5.0, **kwargs):
    super().__init__(**kwargs)
    self.latent_dim = int(latent_dim)
    self.channels = tuple(int(c) for c in channels)
    self.convs_per_block = int(convs_per_block)
    self.weight_decay = float(weight_decay)
    self.log_sigma_bound = float(log_sigma_bound)

  def build(self, input_shape):
    self.encoder = Encoder(self.channels, self.convs_per_block, self.weight_decay, name="encoder")
    self.encoder.build(input_shape)
    self.head = keras.layers.Dense(
        2 * self.latent_dim, kernel_initializer=initializers.kernel_initializer(),
        bias_initializer=initializers.bias_initializer(),
        kernel_regularizer=initializers.kernel_regularizer(self.weight_decay), name="mu_log_sigma")
    self.head.build((input_shape[0], self.channels[-1]))

  def params(self, inputs, training=False):
    """Returns `(mu, log_sigma)`, each `[B, N]`, log-sigma already bounded."""
    features = self.encoder(inputs, training=training)[-1]
    pooled = tf.reduce_mean(features, axis=[1, 2])
    out = tf.cast(self.head(pooled), tf.float32)  # the distribution is float32 under any policy
    mu, raw = out[:, :self.latent_dim], out[:, self.latent_dim:]
    return mu, bound_log_sigma(raw, self.log_sigma_bound)

  def call(self, inputs, training=False):
    mu, log_sigma = self.params(inputs, training=training)
    return tfd.MultivariateNormalDiag(loc=mu, scale_diag=tf.exp(log_sigma))

  def get_config(self):
    config = super().get_config()
    config.update(latent_dim=self.latent_dim, channels=list(self.channels),
                  convs_per_block=self.convs_per_block, weight_decay=self.weight_decay,
                  log_sigma_bound=self.log_sigma_bound)
    return config
