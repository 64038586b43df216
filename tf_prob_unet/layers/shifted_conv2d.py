"""A 2-D convolution with faster gradients: the input gradient as a forward convolution, the
kernel gradient by a native op or by matmuls over offset views."""

import keras
import tensorflow as tf

from tf_prob_unet import native

# Below this many input or output channels the tap matmuls are too thin to beat TensorFlow's
# kernel, and below this many output channels the native op is too (measured per layer on this
# CPU; docs/benchmarks.md). Thin inputs with wide outputs (first layers) use the native op.
MIN_CHANNELS = 32
# Rows of (input + output-gradient) floats per chunk (4 MB): one chunk stays in the last-level
# cache while its kh * kw tap matmuls read it, instead of streaming the batch from memory per tap.
CHUNK_ELEMENTS = 1024 * 1024


def kernel_gradient_by_offsets(inputs, grad_outputs, kernel_size):
  """The gradient of a stride-1 SAME convolution with respect to its kernel, as tap matmuls.

  Let `X` be the input zero-padded by `(kh // 2, kw // 2)`, `[B, Hp, Wp, C_in]`, and `G` the output
  gradient zero-padded at the bottom and right to the same `Hp x Wp` grid. Flattened to rows
  (`[B*Hp*Wp, C]`), input pixel `(b, h + i, w + j)` is row `r + i*Wp + j` where `r` is the row of
  output pixel `(b, h, w)`, so tap `(i, j)` of the kernel gradient is
  `X[i*Wp + j : i*Wp + j + R]^T G[:R]` for every `R`-row range: a matmul over a contiguous row
  range, which TensorFlow slices without copying. The padding rows of `G` are zero, so rows that
  wrap across image borders contribute nothing. Nothing is materialised beyond the two padded
  tensors (no shifted or im2col copies), and the rows are processed in chunks of about
  `CHUNK_ELEMENTS` floats so that each chunk is read from memory once for all `kh * kw` taps.
  Same products as `Conv2DBackpropFilter`, summed in another order; 1.3-2.6x faster than it for
  the U-Net's layers with at least `MIN_CHANNELS` channels on this CPU (docs/benchmarks.md).

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
  padded_width = shape[2] + 2 * pw
  c_in, c_out = shape[3], tf.shape(grad_outputs)[-1]
  x = tf.reshape(tf.pad(inputs, [[0, 0], [ph, ph], [pw, pw], [0, 0]]), tf.stack([-1, c_in]))
  g = tf.reshape(tf.pad(grad_outputs, [[0, 0], [0, 2 * ph], [0, 2 * pw], [0, 0]]),
                 tf.stack([-1, c_out]))
  largest_offset = (kh - 1) * padded_width + (kw - 1)
  rows = tf.shape(x)[0] - largest_offset  # every tap's view stays inside `x`
  chunk = tf.maximum(CHUNK_ELEMENTS // (c_in + c_out), 1)

  def body(start, total):
    size = tf.minimum(chunk, rows - start)
    g_rows = tf.slice(g, tf.stack([start, 0]), tf.stack([size, -1]))
    taps = [tf.matmul(tf.slice(x, tf.stack([start + i * padded_width + j, 0]),
                               tf.stack([size, -1])), g_rows, transpose_a=True)
            for i in range(kh) for j in range(kw)]  # each [C_in, C_out]
    return start + size, total + tf.stack(taps)

  total = tf.zeros(tf.stack([kh * kw, c_in, c_out]), inputs.dtype)
  _, grad = tf.while_loop(lambda start, _: start < rows, body, (tf.constant(0), total),
                          parallel_iterations=1)
  return tf.reshape(grad, tf.stack([kh, kw, c_in, c_out]))


def input_gradient(grad_outputs, kernel):
  """The gradient of a stride-1 SAME convolution with an odd kernel with respect to its input.

  It is itself a stride-1 SAME convolution of the output gradient, with the kernel flipped in
  both spatial axes and its channel axes swapped (the padding is symmetric for odd kernels). Run
  as a forward convolution it is 1.3-2.2x faster than `Conv2DBackpropInput` for most of the
  U-Net's layers on this CPU (oneDNN; docs/benchmarks.md), with the same products summed in another order.

  Args:
    grad_outputs: `[B, H, W, C_out]`.
    kernel: `[kh, kw, C_in, C_out]`, kh and kw odd.

  Returns:
    `[B, H, W, C_in]`.
  """
  flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])  # [kh, kw, C_out, C_in]
  return tf.nn.conv2d(grad_outputs, flipped, 1, "SAME")


def conv2d_same(inputs, kernel, bias=None):
  """`tf.nn.bias_add(tf.nn.conv2d(inputs, kernel, 1, "SAME"), bias)` with faster gradients.

  The input gradient is a forward convolution (`input_gradient`). The kernel and bias gradients
  come from the native op where it applies, which sums the bias gradient while it reads the
  output gradient for the kernel's; else from tap matmuls (`kernel_gradient_by_offsets`) and a
  sum over pixels.

  Args:
    inputs: `[B, H, W, C_in]`.
    kernel: `[kh, kw, C_in, C_out]`, kh and kw odd.
    bias: `[C_out]`, or None for no bias.

  Returns:
    `[B, H, W, C_out]`.
  """
  if bias is None:
    bias = tf.zeros(kernel.shape[-1:], kernel.dtype)

  @tf.custom_gradient
  def conv(x, k, b):
    def grad(dy):
      if k.shape[2] >= MIN_CHANNELS:
        dx = input_gradient(dy, k)
      else:  # a forward convolution to a few channels was not measured faster: TensorFlow's
        dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy,
                                            strides=[1, 1, 1, 1], padding="SAME")
      op = native.conv_kernel_grad_op(x.dtype)
      if op is not None:
        dk, db = op(x, dy, kernel_size=list(k.shape[:2]))
      else:
        dk = kernel_gradient_by_offsets(x, dy, tuple(k.shape[:2]))
        db = tf.reduce_sum(dy, [0, 1, 2])
      return dx, dk, db
    return tf.nn.bias_add(tf.nn.conv2d(x, k, 1, "SAME"), b), grad

  return conv(inputs, kernel, bias)


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ShiftedConv2D(keras.layers.Conv2D):
  """`keras.layers.Conv2D` with faster gradients for stride-1 SAME odd-sized kernels.

  The forward pass, the variables and the config are those of `keras.layers.Conv2D`; the
  gradients are computed here (`conv2d_same`): the input gradient as a forward convolution
  (`input_gradient`), the kernel and bias gradients by the native op `ProbUnetConvKernelGrad`
  (`tf_prob_unet/native`, on CPU where it builds) or else by `kernel_gradient_by_offsets` and a
  sum. This happens only in training calls (`training=True`), so inference and exported graphs
  hold a plain Conv2D. So do a visible GPU and any dtype but float32 (mixed policies): there the
  layer is Keras' Conv2D with TensorFlow's gradients, training included. Other settings (strides, dilation, VALID padding, even
  kernels, channels_first, fewer than `MIN_CHANNELS` output channels, or fewer than
  `MIN_CHANNELS` input channels without the native op) use Keras' own convolution.
  """

  def _uses_shifts(self, inputs):
    # Only where it was measured to help: a CPU (no GPU visible) in float32 (`native.applies`);
    # on a GPU or under a mixed policy the layer is a stock Conv2D with cuDNN's/TF's gradients.
    return (native.applies(tf.as_dtype(inputs.dtype)) and self.padding == "same" and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last"
            and all(k % 2 == 1 for k in self.kernel_size) and self.groups == 1
            and inputs.shape[-1] is not None and self.filters >= MIN_CHANNELS
            # Thin inputs (a network's first layer: 1 or 3 channels) only with the native op,
            # 2.5x faster there than TensorFlow's kernel; the tap matmuls are not.
            and (inputs.shape[-1] >= MIN_CHANNELS
                 or native.conv_kernel_grad_op(tf.as_dtype(inputs.dtype)) is not None))

  def call(self, inputs, training=False):
    if not (training and self._uses_shifts(inputs)):
      return super().call(inputs)  # inference graphs (export, sampling) hold a plain Conv2D
    bias = tf.convert_to_tensor(self.bias) if self.use_bias else None
    outputs = conv2d_same(inputs, tf.convert_to_tensor(self.kernel), bias)
    return outputs if self.activation is None else self.activation(outputs)
