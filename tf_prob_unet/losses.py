"""Losses: reconstruction cross-entropy with an ignore label, the ELBO's KL, the M-Heads loss."""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def pixel_cross_entropy(logits, labels, ignore_index=255):
  """Per-pixel softmax cross-entropy with ignored pixels set to 0.

  Args:
    logits: `[..., H, W, K]` float logits.
    labels: `[..., H, W]` integer labels in `[0, K)` or `ignore_index`.
    ignore_index: label value excluded from the loss (None: no label is ignored).

  Returns:
    `(ce, valid)`: both `[..., H, W]` float32; `ce` is 0 where `valid` is 0.
  """
  labels = tf.cast(labels, tf.int32)
  if ignore_index is None:
    valid = tf.ones_like(labels, tf.float32)
    safe = labels
  else:
    valid = tf.cast(tf.not_equal(labels, ignore_index), tf.float32)
    safe = tf.where(labels == ignore_index, tf.zeros_like(labels), labels)
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=tf.cast(logits, tf.float32))
  return ce * valid, valid


def reconstruction_loss(logits, labels, ignore_index=255):
  """The reference's reconstruction term, per image: CE summed over valid pixels.

  Args:
    logits: `[B, H, W, K]`.
    labels: `[B, H, W]` integer labels.
    ignore_index: label excluded from the sum.

  Returns:
    `(per_image_sum, per_image_mean)`: `[B]` float32 tensors, the summed CE (the training loss
    averages it over the batch) and the mean CE over valid pixels (for logging).
  """
  ce, valid = pixel_cross_entropy(logits, labels, ignore_index)
  total = tf.reduce_sum(ce, axis=[-2, -1])
  mean = total / tf.maximum(tf.reduce_sum(valid, axis=[-2, -1]), 1.0)
  return total, mean


def kl_divergence(posterior, prior, z=None):
  """KL(Q || P) per image, `[B]`.

  Args:
    posterior: Q, a `tfd.MultivariateNormalDiag` with batch shape `[B]`.
    prior: P, same shape.
    z: if given (`[B, N]`, a sample of Q), the single-sample estimate
      `log q(z) - log p(z)`; otherwise the analytic KL between the two Gaussians.
  """
  if z is None:
    return tfd.kl_divergence(posterior, prior)
  return posterior.log_prob(z) - prior.log_prob(z)


def m_heads_loss(per_head_loss, epsilon=0.05):
  """The M-Heads loss: the best head weighted by 1 - epsilon, every other by epsilon / (M - 1).

  The best head is the one with the lowest loss, chosen per example; the weights are constants
  (no gradient flows through the choice). One head gets weight 1.

  Args:
    per_head_loss: `[..., M]` loss of each head (e.g. its CE summed over pixels).
    epsilon: the weight shared by the other heads (0.05 in the paper).

  Returns:
    `[...]` the weighted sum over heads.
  """
  num_heads = per_head_loss.shape[-1]
  if num_heads == 1:
    return per_head_loss[..., 0]
  best = tf.one_hot(tf.argmin(per_head_loss, axis=-1), num_heads, dtype=per_head_loss.dtype)
  weights = best * (1.0 - epsilon) + (1.0 - best) * (epsilon / (num_heads - 1))
  return tf.reduce_sum(tf.stop_gradient(weights) * per_head_loss, axis=-1)
