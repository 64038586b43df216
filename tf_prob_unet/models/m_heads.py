"""The M-Heads baseline: M classifier heads after the U-Net, trained with the best-head loss."""

import keras
import tensorflow as tf

from tf_prob_unet import losses
from tf_prob_unet.models import common
from tf_prob_unet.models.unet import UNetWithHeads


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class MHeads(UNetWithHeads):
  """M heads branching after the last U-Net layer (Rupprecht et al. style multiple hypotheses).

  Training weights the cross-entropy of each image's best head by 1 - epsilon and of every other
  head by epsilon / (M - 1) (`losses.m_heads_loss`, epsilon = 0.05 in the paper). The model has
  exactly M samples per image: `sample(images, m)` returns heads 0, 1, ..., m - 1 in index order
  (for m < M, the first m heads: a fixed, documented subset, not a model trained with M = m) and
  asking for m > M is an error. `call` gives the heads' mean prediction.

  Args: those of `UNetWithHeads` except the dropout arguments, plus
    num_heads: M (4, 8 or 16 in the paper).
    epsilon: the total weight of the non-best heads.
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               head_channels=None, num_head_hidden=3, weight_decay=1e-5, ignore_index=255,
               upsample_mode="align_corners", seed=0, num_heads=4, epsilon=0.05, **kwargs):
    if int(num_heads) < 1 or not 0.0 <= float(epsilon) < 1.0:
      raise ValueError(f"MHeads: expected num_heads >= 1 and 0 <= epsilon < 1, found "
                       f"num_heads={num_heads}, epsilon={epsilon}.")
    super().__init__(num_classes=num_classes, channels=channels,
                     convs_per_block=convs_per_block, head_channels=head_channels,
                     num_head_hidden=num_head_hidden, weight_decay=weight_decay,
                     ignore_index=ignore_index, upsample_mode=upsample_mode, seed=seed,
                     num_heads=num_heads, **kwargs)
    self.num_heads = int(num_heads)
    self.epsilon = float(epsilon)
    self._init_trackers("loss", "rec_loss", "best_head_rec_loss", "weight_decay_loss",
                        "pixel_ce")

  def sample_logits(self, images, num_samples=1, seed=None):
    """The first `num_samples` heads' logits, `[B, m, H, W, K]` (`seed` is unused).

    Raises:
      ValueError: `num_samples` > `num_heads`.
    """
    num_samples = common.check_num_samples(num_samples, self.num_heads, "MHeads", "head")
    return self.head_logits(images, training=False)[:, :num_samples]

  def loss_terms(self, images, labels, seed, training=True):
    """The M-Heads loss of one (per-replica) batch.

    Returns:
      A dict of scalars: `rec_loss` (the weighted CE, each head's CE summed over valid pixels,
      mean over images), `best_head_rec_loss` (the best head's CE), `weight_decay_loss`, `loss`
      (`rec_loss + weight_decay_loss`) and `pixel_ce` (the best head's mean CE per pixel).
    """
    logits = self.head_logits(images, training=training)  # [B, M, H, W, K]
    tiled = tf.repeat(labels[:, tf.newaxis], self.num_heads, axis=1)
    per_head, per_head_mean = losses.reconstruction_loss(logits, tiled, self.ignore_index)
    rec = tf.reduce_mean(losses.m_heads_loss(per_head, self.epsilon))
    best = tf.argmin(per_head, axis=-1)
    wd = self.weight_decay_loss()
    return {"loss": rec + wd, "rec_loss": rec,
            "best_head_rec_loss": tf.reduce_mean(tf.reduce_min(per_head, axis=-1)),
            "weight_decay_loss": wd,
            "pixel_ce": tf.reduce_mean(tf.gather(per_head_mean, best, batch_dims=1))}

  def get_config(self):
    config = super().get_config()
    config.update(num_heads=self.num_heads, epsilon=self.epsilon)
    return config

