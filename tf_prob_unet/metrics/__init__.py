"""Evaluation metrics for ambiguous segmentation: GED, HM-IoU, diversity, S_NCC, mode statistics.

Pure NumPy / SciPy: this package imports neither TensorFlow nor any model code, so it can score
label maps written by any model. All inputs are integer label maps; shapes are
`[B, S, H, W]` (B images, S masks per image) unless stated otherwise. Every function is
vectorised over masks and pixels; work is done in chunks of images to bound memory.

Modules: `distance` (validation and the `1 - IoU` distance core, `iou_distance_matrix`,
`pairwise_distances`), `ged` (GED, sample diversity, ideal and resampled GED), `matching` (HM-IoU),
`ncc` (S_NCC), `modes` (mode statistics, pixel flip rates), `calibration` (reliability diagram,
ECE) and `qubiq` (the QUBIQ score). Every public name is re-exported here, so
`from tf_prob_unet import metrics; metrics.ged(...)` works. The `*_from_distances`, `*_partial`
and `*_counts` forms let a caller compute the distances of a batch once and sum a split's
statistics batch by batch.

Conventions (docs/evaluation.md points here):

Distance.
  `d(A, B) = 1 - IoU(A, B)`, computed per image between two label maps.

  * Binary convention (`num_classes == 2` and `class_ids is None`, the LIDC setting): IoU of
    the foreground (label 1). Two empty masks give IoU 1, so `d = 0`; exactly one empty mask
    gives IoU 0, so `d = 1`. This is the rule of the PHiSeg, SSN, CAR, MoSE and CCDM
    evaluators.
  * Multi-class convention (`class_ids` given, or `num_classes > 2`, which evaluates
    `class_ids = range(num_classes)`; the Cityscapes setting uses the 10 switchable classes):
    `IoU_c = TP / (TP + FP + FN)` per evaluated class, NaN when class `c` is absent from both
    masks; `d = 1 - nanmean_c IoU_c`. `d` is NaN when every evaluated class is absent from
    both masks. Note that `class_ids=[1]` therefore differs from the binary convention on two
    empty masks (NaN instead of 0).

Void pixels (`ignore_index`).
  The void mask of an image is the set of pixels where *any* ground-truth mask of that image
  (the `references` / `modes` / `b` argument) equals `ignore_index`, as in the reference
  implementation, where the void mask comes from the unflipped ground truth and is shared by
  all 32 modes. Those pixels are excluded from every comparison of that image: sample vs
  reference, sample vs sample and reference vs reference. References with weight 0 (padding)
  do not contribute to the void mask in `ged`. Samples may contain `ignore_index`; such pixels
  belong to no class. `ignore_index` must lie outside `[0, num_classes)`.

GED (`ged`).
  `D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]` per image, with samples `S_i` (uniform
  weights `1/n`) and references `Y_j` with weights `w_j` (uniform `1/R` by default: the LIDC
  grader convention; Cityscapes uses the 32 modes weighted by their probabilities).

  * Default (`unbiased=False`, the reference's V-statistic): the expectations over pairs
    include the diagonal pairs `i = i'` and `j = j'`:
    `d_SY = sum_ij w_j d(S_i, Y_j) / n`, `d_SS = sum_ii' d(S_i, S_i') / n^2`,
    `d_YY = sum_jj' w_j w_j' d(Y_j, Y_j')`.
  * `unbiased=True`: diagonal pairs are excluded: `d_SS` averages over `i != i'` (needs
    `n >= 2`); `d_YY = sum_{j != j'} w_j w_j' d(Y_j, Y_j') / (1 - sum_j w_j^2)`; if the
    reference distribution is a point mass (one reference, or one non-zero weight), `d_YY = 0`.

NaN rules.
  * A NaN distance (multi-class, all evaluated classes absent from both masks) is dropped from
    its expectation: each expectation is `sum(weight * d) / sum(weight)` over the non-NaN
    pairs (a nanmean with renormalised weights). The reference's probability-weighted code
    instead averages / sums over pairs with NaN propagation, so one NaN pair makes its image
    NaN (its unweighted variant takes a nanmean for d_YY only); all agree when no pair is NaN.
  * An expectation with no non-NaN pair is NaN, and so is the image's GED. Functions return
    NaN for such images; callers must drop them (the reference notebook drops NaN images
    before averaging, MoSE takes a nanmean) and say how many were dropped.

Hungarian-matched IoU (`hungarian_matched_iou`).
  An optimal transport of the samples (mass `1/S` each) onto the references (mass: their
  weights, uniform `1/R` by default) at cost `d` (NaN counted as 1); the result is the mean IoU
  `1 - d` under the optimal plan, NaN pairs excluded. For uniform weights this equals the
  Hungarian assignment after tiling both sets to `L = lcm(S, R)` masks (CCDM's convention; for
  the usual `S = 16`, `R = 4` the CAR / PixelSeg convention of repeating the references `S / R`
  times); MoSE's "M-IoU" is the same transport.

Sample diversity (`sample_diversity`).
  `E[d(S, S')]` over pairs `i != i'` (SSN's definition; needs `S >= 2`).

S_NCC (`s_ncc`, `s_ncc_labels`): see their docstrings for the exact formula (PHiSeg's). `s_ncc`
  takes the samples' class probabilities (PHiSeg's definition); `s_ncc_labels` the same formula
  on one-hot samples. The mean over references is weighted by the reference weights.

Implementation.
  Per evaluated class, the sizes and pairwise intersections of all masks of an image are one
  Gram matrix `X X^T` of their 0/1 indicators `X` `[M, P]` (a BLAS matrix product), restricted
  to the pixels where some mask holds the class. Counts are exact integers, so results do not
  depend on the chunking. Large, piecewise-constant images are first reduced to their distinct
  pixel columns weighted by their pixel counts (exact; see `distance`).

Mode statistics (`assign_modes`, `mode_statistics`, `pixel_flip_rates`).
  Each sample is assigned to `argmin_m d(Y_m, S)` over modes with non-zero probability; ties go
  to the lowest index and NaN distances count as `+inf` (the reference's `np.argmin` would pick
  a NaN entry). Sampled mode frequencies pool counts over all images and their first `n`
  samples; pixel flip rates count, over the ground-truth pixels of class `c`,
  `#pred c_2 / (#pred c + #pred c_2)`.
"""

from tf_prob_unet.metrics.calibration import expected_calibration_error
from tf_prob_unet.metrics.calibration import reliability_counts
from tf_prob_unet.metrics.calibration import reliability_diagram
from tf_prob_unet.metrics.distance import iou_distance_matrix
from tf_prob_unet.metrics.distance import pairwise_distances
from tf_prob_unet.metrics.ged import _stratified_counts
from tf_prob_unet.metrics.ged import diversity_from_distances
from tf_prob_unet.metrics.ged import ged
from tf_prob_unet.metrics.ged import ged_from_distances
from tf_prob_unet.metrics.ged import ideal_geds
from tf_prob_unet.metrics.ged import ideal_geds_from_distances
from tf_prob_unet.metrics.ged import resampled_ged
from tf_prob_unet.metrics.ged import resampled_ged_from_distances
from tf_prob_unet.metrics.ged import sample_diversity
from tf_prob_unet.metrics.matching import hungarian_matched_iou
from tf_prob_unet.metrics.matching import matched_iou_from_distances
from tf_prob_unet.metrics.matching import transport_plan
from tf_prob_unet.metrics.modes import assign_modes
from tf_prob_unet.metrics.modes import assign_modes_from_distances
from tf_prob_unet.metrics.modes import flip_rates_from_counts
from tf_prob_unet.metrics.modes import mode_statistics
from tf_prob_unet.metrics.modes import mode_statistics_partial
from tf_prob_unet.metrics.modes import pixel_flip_counts
from tf_prob_unet.metrics.modes import pixel_flip_rates
from tf_prob_unet.metrics.modes import reduce_mode_statistics
from tf_prob_unet.metrics.ncc import s_ncc
from tf_prob_unet.metrics.ncc import s_ncc_labels
from tf_prob_unet.metrics.qubiq import QUBIQ_THRESHOLDS
from tf_prob_unet.metrics.qubiq import qubiq_dice

__all__ = [
    "expected_calibration_error",
    "reliability_counts",
    "reliability_diagram",
    "iou_distance_matrix",
    "pairwise_distances",
    "diversity_from_distances",
    "ged",
    "ged_from_distances",
    "ideal_geds",
    "ideal_geds_from_distances",
    "resampled_ged",
    "resampled_ged_from_distances",
    "sample_diversity",
    "hungarian_matched_iou",
    "matched_iou_from_distances",
    "transport_plan",
    "assign_modes",
    "assign_modes_from_distances",
    "flip_rates_from_counts",
    "mode_statistics",
    "mode_statistics_partial",
    "pixel_flip_counts",
    "pixel_flip_rates",
    "reduce_mode_statistics",
    "s_ncc",
    "s_ncc_labels",
    "qubiq_dice",
    "QUBIQ_THRESHOLDS",
]
