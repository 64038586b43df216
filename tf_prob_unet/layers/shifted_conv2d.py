"""A 2-D convolution whose kernel gradient is computed as one matmul over shifted gradients."""

import keras
import tensorflow as tf

# Below this many input channels the matmul is too thin to beat TensorFlow's kernel.
MIN_INPUT_CHANNELS = 8
# Floats of shifted output gradients built at once (64 MB): bounds the extra memory.
CHUNK_ELEMENTS = 16 * 1024 * 1024


def kernel_gradient_by_shifts(inputs, grad_outputs, kernel_size):
  """The gradient of a stride-1 SAME convolution with respect to its kernel, as one matmul.

  With `X` the input zero-padded by `(kh // 2, kw // 2)` and `S_ij` the output gradient `dY`
  placed at offset `(i, j)` on a zero canvas of `X`'s size, tap `(i, j)` of the kernel gradient is
  `X^T S_ij` (all pixels as rows). Concatenating the `kh * kw` shifted copies of `dY` along the
  channels turns the whole gradient into one `[C_in, B*H'*W'] x [B*H'*W', kh*kw*C_out]` matmul, a
  far better shape than TensorFlow's `Conv2DBackpropFilter` (oneDNN or Eigen) gets here: 1.2-2.3x
  faster for the U-Net's layers on this CPU (BUILD.md). Same products, summed in another order.

  Args:
    inputs: `[B, H, W, C_in]`.
    grad_outputs: `[B, H, W, C_out]`.
    kernel_size: `(kh, kw)`, both odd.

  Returns:
    `[kh, kw, C_in, C_out]`.
  """
  kh, kw = kernel_size
  ph, pw = kh // 2, kw // 2
  shape = tf.shape(inputs)
  batch, height, width, c_in = shape[0], shape[1] + 2 * ph, shape[2] + 2 * pw, shape[3]
  c_out = tf.shape(grad_outputs)[-1]
  padded = tf.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
  wide = tf.pad(grad_outputs, [[0, 0], [2 * ph, 2 * ph], [2 * pw, 2 * pw], [0, 0]])
  # The shifted copies take kh * kw times the output gradient's memory: build them for a few
  # images at a time (at most CHUNK_ELEMENTS floats) and accumulate.
  chunk = tf.maximum(1, CHUNK_ELEMENTS // (height * width * kh * kw * c_out))

  def body(start, total):
    x = padded[start:start + chunk]
    g = wide[start:start + chunk]
    shifted = tf.concat([g[:, 2 * ph - i:2 * ph - i + height, 2 * pw - j:2 * pw - j + width, :]
                         for i in range(kh) for j in range(kw)], axis=-1)
    total += tf.matmul(tf.reshape(x, [-1, c_in]), tf.reshape(shifted, [-1, kh * kw * c_out]),
                       transpose_a=True)  # [C_in, kh * kw * C_out]
    return start + chunk, total

  total = tf.zeros(tf.stack([c_in, kh * kw * c_out]), inputs.dtype)
  _, grad = tf.while_loop(lambda start, _: start < batch, body, (tf.constant(0), total),
                          parallel_iterations=1)
  return tf.transpose(tf.reshape(grad, tf.stack([c_in, kh, kw, c_out])), [1, 2, 0, 3])


def conv2d_same(inputs, kernel):
  """`tf.nn.conv2d(inputs, kernel, 1, "SAME")` with the kernel gradient by shifted matmul (odd kernels)."""

  @tf.custom_gradient
  def conv(x, k):
    def grad(dy):
      dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy,
                                          strides=[1, 1, 1, 1], padding="SAME")
      return dx, kernel_gradient_by_shifts(x, dy, tuple(k.shape[:2]))
    return tf.nn.conv2d(x, k, 1, "SAME"), grad

  return conv(inputs, kernel)


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ShiftedConv2D(keras.layers.Conv2D):
  """`keras.layers.Conv2D` with a faster kernel gradient for stride-1 SAME odd-sized kernels.

  The forward pass, the variables, the config and the input gradient are those of
  `keras.layers.Conv2D`; only the kernel gradient is computed by `kernel_gradient_by_shifts`, and only
  in training calls (`training=True`), so inference and exported graphs hold a plain Conv2D. Other
  settings (strides, dilation, VALID padding, even kernels, channels_first, fewer than
  `MIN_INPUT_CHANNELS` input channels) use Keras' own convolution.
  """

  def _uses_shifts(self, inputs):
    return (self.padding == "same" and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last"
            and all(k % 2 == 1 for k in self.kernel_size) and self.groups == 1
            and inputs.shape[-1] is not None and inputs.shape[-1] >= MIN_INPUT_CHANNELS)

  def call(self, inputs, training=False):
    if not (training and self._uses_shifts(inputs)):
      return super().call(inputs)  # inference graphs (export, sampling) hold a plain Conv2D
    outputs = conv2d_same(inputs, tf.convert_to_tensor(self.kernel))
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    return outputs if self.activation is None else self.activation(outputs)
