"""ShiftedConv2D: Keras' Conv2D with the kernel gradient computed as tap matmuls over offset rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests.conftest import requires_native
from tf_prob_unet.layers import shifted_conv2d


def _gradients(layer, x, upstream):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    loss = tf.reduce_sum(y * upstream)
  dx, dk, db = tape.gradient(loss, [x, layer.kernel, layer.bias])
  return y, dx, dk, db


@pytest.fixture
def small_threshold(monkeypatch):
  """Lets the tiny test layers (>= 4 channels) take the tap-matmul path."""
  monkeypatch.setattr(shifted_conv2d, "MIN_CHANNELS", 4)


@pytest.mark.parametrize("native", [pytest.param(True, marks=requires_native), False])  # C++ or taps
@pytest.mark.parametrize("channels_in,kernel_size,padding", [
    (8, 3, "same"), (16, 5, "same"), (12, (3, 1), "same"), (12, (1, 5), "same"),
    (2, 3, "same"),    # a thin input: the native op (TensorFlow's input gradient), else Keras'
    (8, 3, "valid")])  # not SAME: Keras' own convolution
def test_matches_keras_conv2d_forward_and_gradients(small_threshold, monkeypatch, native,
                                                    channels_in, kernel_size, padding):
  monkeypatch.setenv("TF_PROB_UNET_NATIVE", "1" if native else "0")
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(3, 20, 17, channels_in)), tf.float32)
  kwargs = dict(filters=6, kernel_size=kernel_size, padding=padding, activation="relu")
  ours = shifted_conv2d.ShiftedConv2D(**kwargs)
  reference = keras.layers.Conv2D(**kwargs)
  ours.build(x.shape)
  reference.build(x.shape)
  reference.set_weights(ours.get_weights())
  upstream = tf.constant(rng.normal(size=ours.compute_output_shape(x.shape)), tf.float32)
  for a, b in zip(_gradients(ours, x, upstream), _gradients(reference, x, upstream)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@requires_native
def test_tap_matmuls_used_only_where_they_apply(monkeypatch):
  x = tf.zeros([1, 8, 8, 32])
  assert shifted_conv2d.ShiftedConv2D(32, 3, padding="same")._uses_shifts(x)
  assert not shifted_conv2d.ShiftedConv2D(16, 3, padding="same")._uses_shifts(x)  # thin output
  # A thin input (a first layer) only with the native kernel gradient.
  assert shifted_conv2d.ShiftedConv2D(32, 3, padding="same")._uses_shifts(x[..., :3])
  monkeypatch.setenv("TF_PROB_UNET_NATIVE", "0")
  assert not shifted_conv2d.ShiftedConv2D(32, 3, padding="same")._uses_shifts(x[..., :3])
  assert not shifted_conv2d.ShiftedConv2D(32, 3, padding="same", strides=2)._uses_shifts(x)
  assert not shifted_conv2d.ShiftedConv2D(32, 2, padding="same")._uses_shifts(x)


def test_kernel_gradient_in_a_compiled_function_with_unknown_batch(small_threshold):
  layer = shifted_conv2d.ShiftedConv2D(5, 3, padding="same")
  layer.build((None, 16, 16, 8))

  @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 8])])
  def kernel_grad(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(layer(x, training=True) ** 2)
    return tape.gradient(loss, layer.kernel)

  x = tf.random.stateless_normal([2, 16, 16, 8], [1, 2])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum((tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias) ** 2)
  np.testing.assert_allclose(kernel_grad(x).numpy(), tape.gradient(loss, layer.kernel).numpy(),
                             rtol=1e-4, atol=1e-4)


def test_config_round_trip():
  helpers.assert_config_round_trip(shifted_conv2d.ShiftedConv2D(7, 3, padding="same", name="c"))


@pytest.mark.parametrize("chunk_rows", [1, 7, 150, 10**6])
def test_kernel_gradient_is_the_same_built_in_chunks(monkeypatch, chunk_rows):
  """Row chunks of 1, 7 and 150 (not dividing the 5 * 11 * 13 padded rows) or all at once."""
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=(5, 9, 11, 8)), tf.float32)
  dy = tf.constant(rng.normal(size=(5, 9, 11, 4)), tf.float32)
  reference = tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=[3, 3, 8, 4], out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")
  monkeypatch.setattr(shifted_conv2d, "CHUNK_ELEMENTS", chunk_rows * (8 + 4))
  ours = shifted_conv2d.kernel_gradient_by_offsets(x, dy, (3, 3))
  np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-4, atol=1e-4)


def test_inference_graph_holds_a_plain_convolution(small_threshold):
  layer = shifted_conv2d.ShiftedConv2D(4, 3, padding="same")
  layer.build((None, 8, 8, 8))

  def op_types(training):
    fn = tf.function(lambda x: layer(x, training=training))
    graph = fn.get_concrete_function(tf.TensorSpec([2, 8, 8, 8])).graph
    return {op.type for op in graph.get_operations()}

  assert "IdentityN" in op_types(True)  # the custom gradient's marker
  assert "IdentityN" not in op_types(False) and "Conv2D" in op_types(False)
