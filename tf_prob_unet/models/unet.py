"""The deterministic U-Net baseline, and the U-Net-plus-heads core the other baselines share."""

import keras
import tensorflow as tf

from tf_prob_unet import losses
from tf_prob_unet.layers import SegmentationHeads, UNet
from tf_prob_unet.models import common


def mean_prediction_logits(logits, axis=1):
  """Log of the mean softmax over `axis`: logits of the averaged prediction, `[B, H, W, K]`."""
  num = tf.cast(tf.shape(logits)[axis], logits.dtype)
  return tf.reduce_logsumexp(tf.nn.log_softmax(logits, -1), axis=axis) - tf.math.log(num)


class UNetWithHeads(common.SegmentationModel):
  """A U-Net and `num_heads` classifier heads; the base of the U-Net baselines (no `--model`).

  Args:
    num_classes: number of classes K.
    channels: U-Net channels per level.
    convs_per_block: 3x3 convs per block.
    head_channels: hidden channels of each head (None: `channels[0]`, like f_comb's).
    num_head_hidden: hidden 1x1 convs per head (the train binary passes `--num_fcomb_hidden`,
      so a baseline's classifier is the Probabilistic U-Net's f_comb without the latent).
    weight_decay: reference weight-decay coefficient.
    ignore_index: label excluded from the loss.
    upsample_mode: `"align_corners"` (reference) or `"half_pixel"`.
    seed: base seed of the training-time noise (dropout masks).
    num_heads: M, classifier heads after the last U-Net layer.
    dropout_rate: input dropout of the `dropout_levels` innermost encoder and decoder blocks.
    dropout_levels: see `dropout_rate`.
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               head_channels=None, num_head_hidden=3, weight_decay=1e-5, ignore_index=255,
               upsample_mode="align_corners", seed=0, num_heads=1, dropout_rate=0.0,
               dropout_levels=0, **kwargs):
    super().__init__(num_classes=num_classes, ignore_index=ignore_index, seed=seed, **kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.convs_per_block = int(convs_per_block)
    self.head_channels = None if head_channels is None else int(head_channels)
    self.num_head_hidden = int(num_head_hidden)
    self.weight_decay = float(weight_decay)
    self.upsample_mode = upsample_mode
    self.unet = UNet(self.channels, self.convs_per_block, self.weight_decay,
                     upsample_mode=upsample_mode, dropout_rate=dropout_rate,
                     dropout_levels=dropout_levels, name="unet")
    self.heads = SegmentationHeads(self.num_classes, self.head_channels or self.channels[0],
                                   self.num_head_hidden, num_heads, self.weight_decay,
                                   name="heads")
    self._init_trackers("loss", "rec_loss", "weight_decay_loss", "pixel_ce")

  def build(self, input_shape):
    """Builds the U-Net and the heads for images `[B, H, W, C]`."""
    input_shape = tuple(input_shape)
    self.unet.build(input_shape)
    self.heads.build(self.unet.compute_output_shape(input_shape))
    self.built = True

  def head_logits(self, images, training=False, dropout_seed=None):
    """Logits of every head, `[B, M, H, W, K]`."""
    return self.heads(self.unet(images, training=training, dropout_seed=dropout_seed))

  def reconstruction_terms(self, logits, labels):
    """`(rec_loss, pixel_ce)`: CE summed over valid pixels and mean CE per pixel, batch means."""
    rec_sum, rec_mean = losses.reconstruction_loss(logits, labels, self.ignore_index)
    return tf.reduce_mean(rec_sum), tf.reduce_mean(rec_mean)

  def call(self, images, training=False):
    """The deterministic prediction, logits `[B, H, W, K]` (dropout off unless training).

    One head: its logits. Several heads: the log of the heads' mean softmax (the mean
    prediction).
    """
    logits = self.head_logits(images, training=training)
    if self.heads.num_heads == 1:
      return logits[:, 0]
    return mean_prediction_logits(logits)

  def sample_logits(self, images, num_samples=1, seed=None):
    """The deterministic prediction repeated `num_samples` times: `[B, M, H, W, K]`."""
    logits = self(images, training=False)
    return tf.repeat(logits[:, tf.newaxis], num_samples, axis=1)

  def loss_terms(self, images, labels, seed, training=True):
    """Cross-entropy of the first head and weight decay for one (per-replica) batch.

    Args:
      images: `[B, H, W, C]` float.
      labels: `[B, H, W]` int, values in `[0, K)` or `ignore_index`.
      seed: `[2]` int seed of the training noise (the dropout masks of the Dropout U-Net).
      training: forwarded to the layers.

    Returns:
      A dict of scalars: `rec_loss` (CE summed over valid pixels, mean over images),
      `weight_decay_loss`, `loss` (their sum) and `pixel_ce` (mean CE per pixel, for logging).
    """
    logits = self.head_logits(images, training=training, dropout_seed=seed)[:, 0]
    rec, pixel_ce = self.reconstruction_terms(logits, labels)
    wd = self.weight_decay_loss()
    return {"loss": rec + wd, "rec_loss": rec, "weight_decay_loss": wd, "pixel_ce": pixel_ce}

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), convs_per_block=self.convs_per_block,
                  head_channels=self.head_channels, num_head_hidden=self.num_head_hidden,
                  weight_decay=self.weight_decay, upsample_mode=self.upsample_mode)
    return config


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class DeterministicUNet(UNetWithHeads):
  """The plain U-Net (`--model=unet`): one deterministic prediction, the 1-sample corner case.

  `sample(images, m)` returns the same prediction m times, so every evaluation that takes m
  samples scores it without a special case (GED of m copies equals GED1).

  Args: those of `UNetWithHeads` except `num_heads` and the dropout arguments.
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               head_channels=None, num_head_hidden=3, weight_decay=1e-5, ignore_index=255,
               upsample_mode="align_corners", seed=0, **kwargs):
    super().__init__(num_classes=num_classes, channels=channels,
                     convs_per_block=convs_per_block, head_channels=head_channels,
                     num_head_hidden=num_head_hidden, weight_decay=weight_decay,
                     ignore_index=ignore_index, upsample_mode=upsample_mode, seed=seed, **kwargs)
