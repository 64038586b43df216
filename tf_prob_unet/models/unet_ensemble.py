"""The U-Net ensemble baseline: K independently initialised U-Nets, one sample per member."""

import keras
import tensorflow as tf

from tf_prob_unet.models import common
from tf_prob_unet.models.unet import DeterministicUNet, mean_prediction_logits

MEMBER_BATCH = ("shared", "split")


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class UNetEnsemble(common.SegmentationModel):
  """K deterministic U-Nets (`DeterministicUNet` members), each trained with its own loss.

  The members share no variables. One train step minimises the sum of the members' losses (each
  the plain U-Net's: CE summed over pixels, mean over images, plus the member's own weight decay).
  The gradient of a sum with respect to one member's variables is the gradient of that member's
  loss alone, and Adam keeps its moments per variable, so every member follows exactly the
  updates it would follow if trained on its own with the same batches; what the members share is
  the order of the training batches (and the graders drawn for them). See docs/reproduction.md.

  `sample(images, m)` returns members 0, ..., m - 1 in index order (m <= K; more is an error), so
  the first m members of a K-ensemble stand for an ensemble of m independently trained U-Nets.
  `call` gives the ensemble's mean prediction (log of the members' mean softmax).

  With `member_batch="split"` the batch is cut into K equal slices and member k trains on slice
  k only: one ensemble step then costs what one U-Net step costs, each member sees B / K images
  per step and the members no longer share the order of their batches (a compute-matched
  variant for budget comparisons; the paper trains every member on the full schedule).

  Args: those of `DeterministicUNet`, plus
    ensemble_size: K, the number of members (4, 8 or 16 in the paper: as many as samples).
    member_batch: `"shared"` (every member sees the whole batch) or `"split"` (see above; the
      per-replica batch must be a multiple of K).
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               head_channels=None, num_head_hidden=3, weight_decay=1e-5, ignore_index=255,
               upsample_mode="align_corners", seed=0, ensemble_size=4, member_batch="shared",
               **kwargs):
    super().__init__(num_classes=num_classes, ignore_index=ignore_index, seed=seed, **kwargs)
    if int(ensemble_size) < 1:
      raise ValueError(f"UNetEnsemble: expected ensemble_size >= 1, found {ensemble_size}.")
    if member_batch not in MEMBER_BATCH:
      raise ValueError(f"UNetEnsemble: member_batch: expected one of {MEMBER_BATCH}, found "
                       f"{member_batch!r}.")
    self.ensemble_size = int(ensemble_size)
    self.member_batch = member_batch
    self.member_kwargs = dict(
        num_classes=self.num_classes, channels=[int(c) for c in channels],
        convs_per_block=int(convs_per_block),
        head_channels=None if head_channels is None else int(head_channels),
        num_head_hidden=int(num_head_hidden), weight_decay=float(weight_decay),
        ignore_index=self.ignore_index, upsample_mode=upsample_mode)
    self.members = [DeterministicUNet(seed=self.seed + k, name=f"member_{k}",
                                      **self.member_kwargs)
                    for k in range(self.ensemble_size)]
    self._init_trackers("loss", "rec_loss", "weight_decay_loss", "pixel_ce")

  def build(self, input_shape):
    """Builds every member for images `[B, H, W, C]`."""
    for member in self.members:
      member.build(input_shape)
    self.built = True

  def call(self, images, training=False):
    """The ensemble's mean prediction: log of the members' mean softmax, `[B, H, W, K]`."""
    return mean_prediction_logits(tf.stack([m(images, training=training) for m in self.members],
                                           axis=1))

  def sample_logits(self, images, num_samples=1, seed=None):
    """The first `num_samples` members' logits, `[B, m, H, W, K]` (`seed` is unused).

    Raises:
      ValueError: `num_samples` > `ensemble_size`.
    """
    num_samples = common.check_num_samples(num_samples, self.ensemble_size, "UNetEnsemble",
                                           "member")
    return tf.stack([m(images, training=False) for m in self.members[:num_samples]], axis=1)

  def loss_terms(self, images, labels, seed, training=True):
    """The sum of the members' losses for one (per-replica) batch.

    With `member_batch="split"` member k sees the k-th of K equal slices of the batch in training
    calls; evaluation calls (`training=False`, e.g. the train binary's validation, whose last batch
    can be of any size) score every member on the whole batch.

    Returns:
      A dict of scalars: `loss` (sum over members of CE + weight decay: what is minimised),
      `rec_loss` and `pixel_ce` (mean over members), `weight_decay_loss` (sum over members).
    """
    if self.member_batch == "split" and training:
      batches = zip(tf.split(images, self.ensemble_size), tf.split(labels, self.ensemble_size))
    else:
      batches = [(images, labels)] * self.ensemble_size
    terms = [m.loss_terms(x, y, seed, training=training)
             for m, (x, y) in zip(self.members, batches)]
    total = {key: tf.add_n([t[key] for t in terms]) for key in terms[0]}
    k = float(self.ensemble_size)
    return {"loss": total["loss"], "rec_loss": total["rec_loss"] / k,
            "weight_decay_loss": total["weight_decay_loss"], "pixel_ce": total["pixel_ce"] / k}

  def get_config(self):
    config = super().get_config()
    config.update(ensemble_size=self.ensemble_size, member_batch=self.member_batch, **{
        k: v for k, v in self.member_kwargs.items() if k not in ("num_classes", "ignore_index")})
    return config
