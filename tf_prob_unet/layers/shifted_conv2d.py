"""A 2-D convolution whose kernel gradient is computed as one matmul per kernel tap."""

import keras
import tensorflow as tf

# Below this many input channels the per-tap matmuls are too thin to beat TensorFlow's kernel.
MIN_INPUT_CHANNELS = 8


def kernel_gradient_by_taps(inputs, grad_outputs, kernel_size):
  """The gradient of a stride-1 SAME convolution with respect to its kernel.

  For tap `(i, j)` of a `kh x kw` kernel, `dK[i, j] = X_ij^T dY`, where `X_ij` is the padded input
  shifted by `(i, j)` with all pixels as rows (`[B * H * W, C_in]`) and `dY` the output gradient
  (`[B * H * W, C_out]`): `kh * kw` matmuls with a long contraction axis, which run 1.3-2.3x faster
  on CPU than TensorFlow's `Conv2DBackpropFilter` (oneDNN or Eigen) for the U-Net's shapes
  (BUILD.md). Same arithmetic, summed in another order.

  Args:
    inputs: `[B, H, W, C_in]`.
    grad_outputs: `[B, H, W, C_out]`.
    kernel_size: `(kh, kw)`, both odd.

  Returns:
    `[kh, kw, C_in, C_out]`.
  """
  kh, kw = kernel_size
  shape = tf.shape(inputs)
  height, width, c_in = shape[1], shape[2], shape[3]
  c_out = tf.shape(grad_outputs)[-1]
  padded = tf.pad(inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
  grad_rows = tf.reshape(grad_outputs, [-1, c_out])
  taps = []
  for i in range(kh):
    for j in range(kw):
      shifted = tf.reshape(padded[:, i:i + height, j:j + width, :], [-1, c_in])
      taps.append(tf.matmul(shifted, grad_rows, transpose_a=True))
  return tf.reshape(tf.stack(taps), tf.stack([kh, kw, c_in, c_out]))


def conv2d_same(inputs, kernel):
  """`tf.nn.conv2d(inputs, kernel, 1, "SAME")` with the kernel gradient by taps (odd kernels)."""

  @tf.custom_gradient
  def conv(x, k):
    def grad(dy):
      dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy,
                                          strides=[1, 1, 1, 1], padding="SAME")
      return dx, kernel_gradient_by_taps(x, dy, tuple(k.shape[:2]))
    return tf.nn.conv2d(x, k, 1, "SAME"), grad

  return conv(inputs, kernel)


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ShiftedConv2D(keras.layers.Conv2D):
  """`keras.layers.Conv2D` with a faster kernel gradient for stride-1 SAME odd-sized kernels.

  The forward pass, the variables, the config and the input gradient are those of
  `keras.layers.Conv2D`; only the kernel gradient is computed by `kernel_gradient_by_taps`. Other
  settings (strides, dilation, VALID padding, even kernels, channels_first, fewer than
  `MIN_INPUT_CHANNELS` input channels) use Keras' own convolution.
  """

  def _uses_taps(self, inputs):
    return (self.padding == "same" and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last"
            and all(k % 2 == 1 for k in self.kernel_size) and self.groups == 1
            and inputs.shape[-1] is not None and inputs.shape[-1] >= MIN_INPUT_CHANNELS)

  def convolution_op(self, inputs, kernel):
    if not self._uses_taps(inputs):
      return super().convolution_op(inputs, kernel)
    return conv2d_same(inputs, tf.convert_to_tensor(kernel))
