"""The native f_comb kernel: its build, its parity with the TensorFlow ops, its errors."""

import os

import numpy as np
import pytest
import tensorflow as tf
from numpy.testing import assert_allclose

from tests.conftest import requires_native, tiny_batch
from tests.test_prob_unet import make_model
from tf_prob_unet import native
from tf_prob_unet.layers import FComb

OP_NAME = "ProbUnetFcombSample"
GRAD_OP_NAME = "ProbUnetConvKernelGrad"


def _fcomb(num_classes, channels, num_hidden, feature_channels=5, latent_dim=3):
  layer = FComb(num_classes, latent_dim=latent_dim, channels=channels, num_hidden=num_hidden)
  layer.build((None, None, None, feature_channels))
  rng = np.random.default_rng(channels * 100 + num_hidden * 10 + num_classes)
  # Random biases too (they start at zero), so that every term of the arithmetic is exercised.
  layer.set_weights([w + 0.3 * rng.standard_normal(w.shape).astype(np.float32)
                     for w in layer.get_weights()])
  return layer


@requires_native
def test_libraries_build_for_this_machine():
  for source in native.SOURCES:
    path = native.build(source)
    assert os.path.isfile(path) and path == native.library_path(source)
  assert native.fcomb_sample_op() is not None and native.conv_kernel_grad_op() is not None


@requires_native
@pytest.mark.parametrize("num_classes,channels,num_hidden", [
    (2, 32, 3),    # the reference f_comb
    (2, 12, 3),    # channels not a multiple of 8 (padded inside the kernel)
    (24, 8, 2),    # many classes (Cityscapes)
    (3, 16, 1),    # no hidden layer after the first
])
@pytest.mark.parametrize("num_samples", [1, 5])
def test_native_matches_tensorflow_ops(num_classes, channels, num_hidden, num_samples):
  layer = _fcomb(num_classes, channels, num_hidden)
  rng = np.random.default_rng(0)
  # 13 x 11 = 143 pixels: one full tile of 96 and a partial one.
  features = tf.constant(rng.standard_normal((2, 13, 11, 5)).astype(np.float32))
  z = tf.constant(rng.standard_normal((2, num_samples, 3)).astype(np.float32))
  projected = layer.project_features(features)

  want = layer.combine(projected, z, native=False).numpy()
  got = layer.combine(projected, z, native=True).numpy()
  assert got.shape == want.shape == (2, num_samples, 13, 11, num_classes)
  assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.ptp(want) > 1.0  # the logits vary: the comparison is not between constants

  labels = layer.combine(projected, z, labels_only=True, native=True).numpy()
  assert labels.dtype == np.int32 and labels.shape == want.shape[:-1]
  ordered = np.sort(want, axis=-1)
  clear = ordered[..., -1] - ordered[..., -2] > 1e-4  # not a near-tie
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(labels[clear], np.argmax(want, -1)[clear])
  assert len(np.unique(labels)) > 1


@requires_native
def test_model_samples_equal_with_and_without_native_kernel():
  model = make_model()
  images, _ = tiny_batch(2)
  noise = tf.random.stateless_normal([2, 16, model.latent_dim], seed=[3, 4])
  fused = tf.function(lambda x: model.sample_from_noise(x, noise, labels_only=True))
  plain = tf.function(
      lambda x: model.sample_from_noise(x, noise, labels_only=True, native=False))
  ops = {op.type for op in fused.get_concrete_function(images).graph.get_operations()}
  assert OP_NAME in ops  # the default uses the kernel on this CPU-only machine
  ops = {op.type for op in plain.get_concrete_function(images).graph.get_operations()}
  assert OP_NAME not in ops
  a, b = fused(images).numpy(), plain(images).numpy()
  assert (a != b).mean() < 1e-3 and len(np.unique(a)) == 2


def test_training_call_never_uses_native_kernel():
  model = make_model()
  images, labels = tiny_batch(2)

  def loss():
    return model.loss_terms(images, labels, tf.constant([1, 2]))["loss"]
  graph = tf.function(loss).get_concrete_function().graph
  assert OP_NAME not in {op.type for op in graph.get_operations()}


@requires_native
def test_bad_shapes_name_the_input():
  op = native.fcomb_sample_op()
  projected = tf.zeros([2, 10, 8])
  kernel, bias = tf.zeros([8, 8]), tf.zeros([8])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"z_part: expected \[2, M, 8\]"):
    op(projected, tf.zeros([3, 4, 8]), [kernel], [bias], tf.zeros([8, 2]), tf.zeros([2]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernels\[0\]: expected \[8, 8\]"):
    op(projected, tf.zeros([2, 4, 8]), [tf.zeros([8, 7])], [bias], tf.zeros([8, 2]),
       tf.zeros([2]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"logits_bias: expected \[2\]"):
    op(projected, tf.zeros([2, 4, 8]), [kernel], [bias], tf.zeros([8, 2]), tf.zeros([3]))


def test_switched_off_falls_back_and_native_true_refuses(monkeypatch):
  monkeypatch.setenv("TF_PROB_UNET_NATIVE", "0")
  assert native.fcomb_sample_op() is None
  layer = _fcomb(2, 8, 2)
  projected = layer.project_features(tf.ones([1, 4, 4, 5]))
  z = tf.ones([1, 3, 3])
  out = tf.function(lambda p: layer.combine(p, z)).get_concrete_function(projected)
  assert OP_NAME not in {op.type for op in out.graph.get_operations()}
  with pytest.raises(ValueError, match="native=True needs the native f_comb kernel"):
    layer.combine(projected, z, native=True)


def test_failed_builds_raise_and_leave_nothing(monkeypatch, tmp_path):
  monkeypatch.setenv("TF_PROB_UNET_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", "no-such-compiler")
  with pytest.raises(RuntimeError, match="'no-such-compiler'"):
    native.build()
  monkeypatch.delenv("CXX")
  broken = tmp_path / "broken_op.cc"
  broken.write_text("this is not C++;\n")
  with pytest.raises(RuntimeError, match=r"compiling .*broken_op.cc failed"):
    native.build(str(broken))
  assert os.listdir(tmp_path / "cache") == []  # no partial library under any name


@requires_native
@pytest.mark.parametrize("shape,c_out,kernel_size", [
    ((3, 9, 11, 8), 16, (3, 3)),   # C_out a multiple of 8: the gradient is read in place
    ((2, 7, 5, 13), 6, (3, 3)),    # C_in not a multiple of 6, C_out not of 8 (zero-padded copy)
    ((1, 12, 10, 32), 40, (5, 3)), # a 5 x 3 kernel; 2.5 blocks of 16 output channels
    ((2, 1, 1, 4), 8, (3, 3)),     # a 1 x 1 image: only the centre tap sees data
    ((2, 6, 6, 7), 9, (1, 1)),
])
def test_conv_kernel_gradient_matches_tensorflow(shape, c_out, kernel_size):
  rng = np.random.default_rng(sum(shape) + c_out)
  x = tf.constant(rng.normal(size=shape), tf.float32)
  dy = tf.constant(rng.normal(size=shape[:3] + (c_out,)), tf.float32)
  want = tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=list(kernel_size) + [shape[-1], c_out], out_backprop=dy,
      strides=[1, 1, 1, 1], padding="SAME").numpy()
  op = native.conv_kernel_grad_op()
  got, got_bias = (t.numpy() for t in op(x, dy, kernel_size=list(kernel_size)))
  assert got.shape == want.shape and got_bias.shape == (c_out,)
  assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert_allclose(got_bias, np.sum(dy.numpy(), axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
  # Each element is summed by one thread in a fixed order: repeated calls agree to the bit.
  again, again_bias = (t.numpy() for t in op(x, dy, kernel_size=list(kernel_size)))
  np.testing.assert_array_equal(again, got)
  np.testing.assert_array_equal(again_bias, got_bias)


@requires_native
@pytest.mark.parametrize("shape,c_out", [((2, 0, 5, 4), 8), ((2, 5, 5, 0), 8)])
def test_conv_kernel_gradient_of_empty_inputs(shape, c_out):
  # No pixels: both gradients are zero. No input channels: an empty kernel, the bias still sums.
  rng = np.random.default_rng(0)
  dy = rng.normal(size=shape[:3] + (c_out,)).astype(np.float32)
  kernel, bias = native.conv_kernel_grad_op()(tf.zeros(shape), dy, kernel_size=[3, 3])
  assert kernel.shape == (3, 3, shape[-1], c_out)
  assert_allclose(bias.numpy(), dy.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


@requires_native
def test_conv_kernel_gradient_bad_inputs_name_what_they_are():
  op = native.conv_kernel_grad_op()
  x = tf.zeros([2, 8, 8, 4])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad_output: expected \[2, 8, 8, "):
    op(x, tf.zeros([2, 8, 7, 4]), kernel_size=[3, 3])
  with pytest.raises(tf.errors.InvalidArgumentError, match="kernel_size: expected two positive"):
    op(x, tf.zeros([2, 8, 8, 4]), kernel_size=[2, 3])


@requires_native
def test_training_graph_uses_the_native_kernel_gradient(monkeypatch):
  from tf_prob_unet.layers import shifted_conv2d
  layer = shifted_conv2d.ShiftedConv2D(32, 3, padding="same")
  layer.build((None, 8, 8, 32))

  def op_types():
    def grad(x):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
      return tape.gradient(loss, [layer.kernel, layer.bias])
    graph = tf.function(grad).get_concrete_function(tf.TensorSpec([2, 8, 8, 32])).graph
    return {op.type for op in graph.get_operations()}

  types = op_types()
  assert GRAD_OP_NAME in types
  assert "BiasAddGrad" not in types  # the op sums the bias gradient too
  monkeypatch.setenv("TF_PROB_UNET_NATIVE", "0")
  assert GRAD_OP_NAME not in op_types()
