"""The U-Net core: encoder, bilinear upsampling to the skip's size, concatenation, conv blocks."""

import keras
import tensorflow as tf

from tf_prob_unet.layers.conv_block import ConvBlock
from tf_prob_unet.layers.encoder import Encoder, fold_seed

UPSAMPLE_MODES = ("align_corners", "half_pixel")


def resize_bilinear(x, size, mode):
  """Bilinear resize of `x` [B, h, w, C] to `size` (a [2] int tensor).

  `align_corners` is the reference's TF1 behaviour (corner pixels aligned, no half-pixel
  offset); `half_pixel` is TF2's `tf.image.resize` default.
  """
  align = mode == "align_corners"
  resized = tf.raw_ops.ResizeBilinear(images=x, size=size, align_corners=align,
                                      half_pixel_centers=not align)
  return tf.cast(resized, x.dtype)  # float32 out whatever comes in; a no-op for float32


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class UNet(keras.layers.Layer):
  """The U-Net of the reference implementation, without a classifier.

  Args:
    channels: channels per level (reference: 32, 64, 128, 192, 192, 192, 192; the LIDC-size
      default 32, 64, 128, 192).
    convs_per_block: 3x3 convolutions per block.
    weight_decay: reference weight-decay coefficient (`weight_decay * sum(w^2) / 2` on kernels).
    upsample_mode: `"align_corners"` (reference, TF1 `resize_bilinear(align_corners=True)`) or
      `"half_pixel"` (TF2 default).
    dropout_rate: input dropout of the `dropout_levels` innermost encoder and decoder blocks.
    dropout_levels: number of innermost encoder blocks and of innermost decoder blocks with
      dropout (3 for the paper's Dropout U-Net).

  Input shape: `[B, H, W, C]`. Output shape: `[B, H, W, channels[0]]`, the last full-resolution
  feature map (ReLU activations; no logits).
  """

  def __init__(self, channels=(32, 64, 128, 192), convs_per_block=3, weight_decay=1e-5,
               upsample_mode="align_corners", dropout_rate=0.0, dropout_levels=0, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.convs_per_block = int(convs_per_block)
    self.weight_decay = float(weight_decay)
    if upsample_mode not in UPSAMPLE_MODES:
      raise ValueError(f"UNet: `upsample_mode` must be one of {UPSAMPLE_MODES}, "
                       f"found {upsample_mode!r}.")
    self.upsample_mode = upsample_mode
    self.dropout_rate = float(dropout_rate)
    self.dropout_levels = int(dropout_levels)

  def build(self, input_shape):
    self.encoder = Encoder(self.channels, self.convs_per_block, self.weight_decay,
                           dropout_rate=self.dropout_rate, dropout_levels=self.dropout_levels,
                           name="encoder")
    self.encoder.build(input_shape)
    enc_shapes = self.encoder.compute_output_shape(input_shape)
    self.decoder_blocks = []
    n = len(self.channels)
    x_shape = enc_shapes[-1]
    for i, level in enumerate(range(n - 2, -1, -1)):
      skip = enc_shapes[level]
      rate = self.dropout_rate if i < self.dropout_levels else 0.0
      block = ConvBlock(self.channels[level], self.convs_per_block, pool=False,
                        dropout_rate=rate, weight_decay=self.weight_decay,
                        name=f"decoder_block_{level}")
      block.build(skip[:3] + (x_shape[-1] + skip[-1],))
      x_shape = block.compute_output_shape(skip[:3] + (x_shape[-1] + skip[-1],))
      self.decoder_blocks.append(block)

  def call(self, inputs, training=False, dropout_seed=None):
    """Features `[B, H, W, channels[0]]`.

    `dropout_seed` (`[2]` int tensor, optional) fixes the dropout masks (stateless RNG) when
    dropout is active (`training=True` and `dropout_rate > 0`).
    """
    features = self.encoder(inputs, training=training, dropout_seed=dropout_seed)
    x = features[-1]
    n = len(self.channels)
    for block, level in zip(self.decoder_blocks, range(n - 2, -1, -1)):
      skip = features[level]
      up = resize_bilinear(x, tf.shape(skip)[1:3], self.upsample_mode)
      x = block(tf.concat([up, skip], axis=-1), training=training,
                dropout_seed=fold_seed(dropout_seed, n + level))
    return x

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:3]) + (self.channels[0],)

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), convs_per_block=self.convs_per_block,
                  weight_decay=self.weight_decay, upsample_mode=self.upsample_mode,
                  dropout_rate=self.dropout_rate, dropout_levels=self.dropout_levels)
    return config
