"""f_comb: combines the U-Net features with latent samples through 1x1 convolutions."""

import keras
import tensorflow as tf

from tf_prob_unet import native as native_kernels
from tf_prob_unet.layers import initializers


def _dense_last_axis(x, kernel, bias=None):
  """`x @ kernel (+ bias)` over the last axis of `x` of any rank, as one 2-D matmul."""
  shape = tf.shape(x)
  out = tf.matmul(tf.reshape(x, [-1, tf.shape(kernel)[0]]), kernel)
  if bias is not None:
    out = tf.nn.bias_add(out, bias)
  return tf.reshape(out, tf.concat([shape[:-1], tf.shape(kernel)[1:]], axis=0))


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class FComb(keras.layers.Layer):
  """The paper's f_comb: `[features, tile(z)] -> num_hidden x (1x1 conv, ReLU) -> 1x1 logits`.

  The reference tiles z over H x W, concatenates it after the U-Net features and applies 1x1
  convolutions. The first convolution is linear in `[features, z]`, so its result equals
  `features @ W_f + z @ W_z + b`. `project_features` computes the feature part once per image and
  `combine` adds the latent part for any number of samples; the weights are those of the single
  concatenated convolution (kernel `[C + N, channels]`), so the result is identical to the
  concatenation, only cheaper when many samples share one image.

  Args:
    num_classes: logits channels (2 for binary tasks).
    latent_dim: N.
    channels: channels of the hidden 1x1 convolutions (reference: the first U-Net level, 32).
    num_hidden: hidden 1x1 convolutions (3 in the reference).
    weight_decay: reference weight-decay coefficient for the hidden kernels (the logits kernel is
      not decayed, as in the reference).

  Call arguments:
    features: `[B, H, W, C]` U-Net features.
    z: `[B, N]` (one latent per image) or `[B, M, N]` (M latents per image).

  Returns:
    Logits `[B, H, W, num_classes]` for `z` of rank 2, `[B, M, H, W, num_classes]` for rank 3.
  """

  def __init__(self, num_classes, latent_dim=6, channels=32, num_hidden=3, weight_decay=1e-5,
               **kwargs):
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)
    self.latent_dim = int(latent_dim)
    self.channels = int(channels)
    self.num_hidden = int(num_hidden)
    if self.num_hidden < 1:
      raise ValueError(f"FComb: `num_hidden` must be >= 1, found {num_hidden}.")
    self.weight_decay = float(weight_decay)

  def build(self, features_shape, z_shape=None):
    self.feature_channels = int(features_shape[-1])
    self.hidden = []
    in_channels = self.feature_channels + self.latent_dim
    for i in range(self.num_hidden):
      dense = initializers.dense(self.channels, self.weight_decay, "relu", f"hidden_{i}")
      dense.build((None, in_channels))
      in_channels = self.channels
      self.hidden.append(dense)
    self.logits = initializers.dense(self.num_classes, name="logits")
    self.logits.build((None, in_channels))

  def project_features(self, features):
    """The feature part of the first 1x1 conv: `[B, H, W, C] -> [B, H, W, channels]`."""
    first = self.hidden[0]
    kernel = tf.convert_to_tensor(first.kernel)[:self.feature_channels]
    return _dense_last_axis(features, kernel, tf.convert_to_tensor(first.bias))

  def combine(self, projected, z, labels_only=False, native=None):
    """Logits for M latents per image from `project_features`' output.

    On CPU the per-sample part is one fused native kernel over tiles of pixels (`native`).
    Otherwise, with M > 1, it runs image by image and sample by sample (`tf.map_fn` over the
    B * M pairs), so its intermediates (`[H * W, channels]`) stay in cache instead of
    materialising `[B, M, H, W, channels]` tensors; on a 2-core CPU this is about 5x faster for
    M = 100 at 128x128 and needs far less memory. The arithmetic is the same.

    Args:
      projected: `[B, H, W, channels]`.
      z: `[B, M, N]`.
      labels_only: return the arg-max labels `[B, M, H, W]` int32 instead of the logits,
        computed chunk by chunk (no `[B, M, H, W, K]` tensor is materialised). For two classes
        the label is `l1 - l0 > 0`, which equals the arg-max, ties included.
      native: run the per-sample part as the fused C++ kernel of `tf_prob_unet.native` (about
        1.5x faster on CPU; no gradient, and a graph holding it needs that library to load).
        None (default) uses it when it is available, the inputs are float32 and no GPU is
        visible; False always uses TensorFlow ops (training, exports); True requires it. Both
        compute the same arithmetic; float summation order differs (logits agree to ~1e-6).

    Returns:
      `[B, M, H, W, num_classes]` logits, or `[B, M, H, W]` int32 labels.
    """
    first = self.hidden[0]
    z_kernel = tf.convert_to_tensor(first.kernel)[self.feature_channels:]
    z_part = tf.matmul(tf.cast(z, projected.dtype), z_kernel)  # [B, M, channels]
    kernels = [(tf.convert_to_tensor(d.kernel), tf.convert_to_tensor(d.bias))
               for d in self.hidden[1:]]
    logits_kernel = tf.convert_to_tensor(self.logits.kernel)
    logits_bias = tf.convert_to_tensor(self.logits.bias)
    binary_labels = labels_only and self.num_classes == 2
    if binary_labels:
      logits_kernel = logits_kernel[:, 1:] - logits_kernel[:, :1]
      logits_bias = logits_bias[1:] - logits_bias[:1]
    shape = tf.shape(projected)
    batch, height, width = shape[0], shape[1], shape[2]
    pixels = tf.reshape(projected, [batch, height * width, self.channels])
    out_shape = [batch, -1, height, width] + ([] if labels_only else [self.num_classes])

    fused = self._native_op(native, projected.dtype)
    if fused is not None:
      out = fused(pixels, z_part, [k for k, _ in kernels], [b for _, b in kernels],
                  logits_kernel, logits_bias, out_type=tf.int32 if labels_only else tf.float32)
      return tf.reshape(out, out_shape)

    def mlp(p, zp):
      # p: [..., P, channels]; zp: [..., 1, channels] -> logits [..., P, K], as 2-D matmuls so
      # grappler fuses matmul + bias + ReLU.
      h = tf.reshape(tf.nn.relu(p + zp), [-1, self.channels])
      for kernel, bias in kernels:
        h = tf.nn.relu(tf.nn.bias_add(tf.matmul(h, kernel), bias))
      out = tf.nn.bias_add(tf.matmul(h, logits_kernel), logits_bias)
      if binary_labels:
        return tf.cast(out[:, 0] > 0, tf.int32)
      if labels_only:
        return tf.argmax(out, axis=-1, output_type=tf.int32)
      return out

    if z.shape[1] == 1:
      return tf.reshape(mlp(pixels, z_part), out_shape)
    num = tf.shape(z_part)[1]
    flat_z = tf.reshape(z_part, [-1, self.channels])

    def one(i):
      return mlp(pixels[i // num], flat_z[i][tf.newaxis])

    out = tf.map_fn(one, tf.range(batch * num),
                    fn_output_signature=tf.int32 if labels_only else projected.dtype,
                    parallel_iterations=2)
    return tf.reshape(out, out_shape)

  @staticmethod
  def _native_op(native, dtype):
    """The fused op to use for `combine(native=...)`, or None for TensorFlow ops."""
    if native is False:
      return None
    if native is None:
      return native_kernels.fcomb_sample_op(dtype)
    op = native_kernels.fcomb_sample_op()
    if op is None or dtype != tf.float32:
      raise ValueError(
          f"FComb.combine: native=True needs the native f_comb kernel and float32 inputs; found "
          f"kernel {'unavailable (see the log)' if op is None else 'available'} and "
          f"dtype {dtype.name}.")
    return op

  def call(self, features, z):
    single = len(z.shape) == 2
    if single:
      z = z[:, tf.newaxis]
    # The layer call is the training path: TensorFlow ops, which have gradients.
    logits = self.combine(self.project_features(features), z, native=False)
    return logits[:, 0] if single else logits

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, latent_dim=self.latent_dim,
                  channels=self.channels, num_hidden=self.num_hidden,
                  weight_decay=self.weight_decay)
    return config
