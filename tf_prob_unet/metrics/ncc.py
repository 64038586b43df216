"""S_NCC of PHiSeg (Baumgartner et al. 2019): `s_ncc` from the samples' class probabilities
(PHiSeg's definition, reported as `ncc`), and `s_ncc_labels`, the same formula on one-hot samples.
"""

import numpy as np

from tf_prob_unet.metrics.distance import _check_pair
from tf_prob_unet.metrics.distance import _check_weights
from tf_prob_unet.metrics.distance import _chunk_images
from tf_prob_unet.metrics.distance import _labels
from tf_prob_unet.metrics.distance import _resolve_classes
from tf_prob_unet.metrics.distance import _void_valid

__all__ = ["s_ncc", "s_ncc_labels"]

# Tolerance of the probability range check (float32 softmax outputs).
_PROB_ATOL = 1e-4


def s_ncc(probabilities, references, reference_weights=None, *, num_classes, eps=1e-8,
          ignore_index=None, num_samples=None):
  """S_NCC of PHiSeg (`variance_ncc_dist`), from each sample's class probabilities, per image.

  With `s_i` the softmax map of sample `i` (`[H, W, K]`), `sbar = mean_i s_i`, `y_j` the one-hot
  map of reference `j` and `CE(p, q) = -sum_c q_c log(p_c + eps)` per pixel:

    E_ss(x)   = mean_i CE(s_i, sbar)(x)  = -sum_c sbar_c(x) mean_i log(s_i,c(x) + eps)
    E_sy_j(x) = mean_i CE(s_i, y_j)(x)   = -mean_i log(s_i,y_j(x)(x) + eps)
    S_NCC     = sum_j w_j NCC(E_ss, E_sy_j),

  NCC being the normalised cross-correlation over the (valid) pixels,
  `sum_x (a - mean a) / (std a * n) * (v - mean v) / std v` (the Pearson correlation), and `w_j`
  the reference weights (uniform `1/R` by default, PHiSeg's mean over the graders). If `E_ss`
  or `E_sy_j` has zero variance over the pixels (e.g. identical one-hot samples), that NCC is
  NaN; NaN terms are dropped from the weighted mean with the weights renormalised, and the
  image is NaN if no term is left. Identical *soft* samples are not NaN: `E_ss` is then the
  entropy of their shared softmax. Higher is better.

  Args:
    probabilities: `[B, S, H, W, K]` per-sample class probabilities (softmax outputs),
      `K == num_classes`.
    references: `[B, R, H, W]` reference label maps.
    reference_weights: `[B, R]` (or `[R]`) non-negative weights with rows summing to 1; None
      gives uniform `1/R`. Zero-weight references are padding.
    num_classes: number of classes K.
    eps: the constant inside the logarithm (PHiSeg: 1e-8); the logarithms are taken in the
      precision of `probabilities`, the sums in float64.
    ignore_index: optional void label; pixels where any (non-zero-weight) reference equals it
      are excluded from the correlation.
    num_samples: optional sample counts `n`: score the first `n` samples for each `n` in one
      pass over the samples.

  Returns:
    `[B]` float64, or with `num_samples` a dict `{str(n): [B]}`.

  Raises:
    ValueError: on malformed inputs.
  """
  _resolve_classes(num_classes, None, ignore_index)
  probs = np.asarray(probabilities)
  if probs.ndim != 5 or probs.shape[-1] != num_classes:
    raise ValueError(f"`probabilities` must have shape [B, S, H, W, K = {num_classes}]; got "
                     f"{probs.shape}.")
  if probs.dtype.kind != "f":
    raise ValueError(f"`probabilities` must be floating point; got dtype {probs.dtype}.")
  if probs.shape[1] < 1:
    raise ValueError(f"`probabilities` must contain at least 1 sample per image (axis 1); got "
                     f"{probs.shape[1]}.")
  references, _ = _labels(references, "references", num_classes, ignore_index)
  _check_pair(probs[..., 0], "probabilities", references, "references")
  if not eps > 0:
    raise ValueError(f"`eps` must be > 0; got {eps}.")
  batch, s = probs.shape[:2]
  counts = [s] if num_samples is None else [int(n) for n in num_samples]
  if not counts or not all(1 <= n <= s for n in counts):
    raise ValueError(f"`num_samples` must list counts in [1, S = {s}]; got {num_samples}.")
  r = references.shape[1]
  w = _check_weights(reference_weights, batch, r, "reference_weights")
  valid_all = _void_valid(references, ignore_index, w)
  pixels = probs.shape[2] * probs.shape[3]
  out = {str(n): np.empty(batch) for n in counts}
  for b in range(batch):
    p = probs[b].reshape(s, pixels, num_classes)
    lo, hi = np.min(p), np.max(p)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -_PROB_ATOL and hi <= 1 + _PROB_ATOL):
      raise ValueError(f"`probabilities` must lie in [0, 1]; image {b} holds values in "
                       f"[{lo}, {hi}].")
    y = references[b].reshape(r, pixels).T.astype(np.intp)  # [P, R]
    if valid_all is None:
      valid = np.ones((pixels, 1), bool)
    else:
      valid = valid_all[b].reshape(pixels, 1)
      y = np.where(valid, y, 0)
    flat = np.arange(pixels)[:, None] * num_classes + y  # flat indices into [P, K]
    sum_p = np.zeros((pixels, num_classes))
    sum_log = np.zeros((pixels, num_classes))
    for i in range(max(counts)):  # one sample at a time: no [S, P, K] float64 buffer
      sum_p += p[i]
      sum_log += np.log(p[i] + p.dtype.type(eps))  # in the probabilities' precision
      if i + 1 not in counts:
        continue
      mean_log = sum_log / (i + 1)
      e_ss = -np.einsum("pc,pc->p", sum_p / (i + 1), mean_log)
      e_sy = -np.take(mean_log, flat)  # [P, R]: mean_log[p, y_j(p)]
      out[str(i + 1)][b] = _mean_pearson(e_ss[None, :, None], e_sy[None], valid[None],
                                         w[b:b + 1])[0]
  return out if num_samples is not None else out[str(s)]


def s_ncc_labels(samples, references, *, num_classes=2, eps=1e-7, ignore_index=None):
  """S_NCC computed from sampled label maps (one-hot samples), per image.

  This is `s_ncc` applied to one-hot probability maps, with uniform reference weights; it
  needs no probabilities, so it scores any model's label maps, but on hard labels its value
  differs from PHiSeg's S_NCC, which uses the softmax maps.

  Samples are turned into one-hot probability maps `s` (`[C, H, W]` each) with mean
  `sbar = mean_s s`; `y_j` is the one-hot map of reference `j`. Following PHiSeg's code
  (`CE(p, q) = -sum_c p_c log(q_c + eps)`, the log taken of the sample):

    A(x)   = E_s[CE(sbar, s)](x)  = E_s[-sum_c sbar_c(x) log(s_c(x) + eps)]
    B_j(x) = E_s[CE(y_j, s)](x)   = E_s[-sum_c y_j,c(x) log(s_c(x) + eps)]
    S_NCC  = (1 / R) sum_j NCC(A, B_j),

  where NCC is the Pearson correlation over (valid) pixels. For one-hot samples
  `E_s[log(s_c + eps)] = sbar_c log(1 + eps) + (1 - sbar_c) log(eps)`, which is how the maps
  are computed (exactly, from per-pixel class counts, without per-sample maps). `A` is thus an
  affine function of the pixel-wise Gini impurity `1 - sum_c sbar_c^2` and `B_j` of the
  fraction of samples disagreeing with `y_j`. (With the arguments of the cross-entropy swapped,
  `B_j` would be the same for one-hot maps, but `A` would become the entropy of `sbar`; this
  function follows PHiSeg's order.) If `A` or `B_j` has zero variance over the pixels, that NCC
  is NaN; the mean over references skips NaN entries and is NaN only if all are NaN (e.g. all
  samples identical). Higher is better.

  Args:
    samples: `[B, S, H, W]` label maps.
    references: `[B, R, H, W]` label maps.
    num_classes: number of labels C.
    eps: the constant inside the logarithm.
    ignore_index: optional void label; pixels where any reference equals it are excluded
      from the correlation (and void sample pixels count as no class).

  Returns:
    `[B]` float64.

  Raises:
    ValueError: on malformed inputs.
  """
  _resolve_classes(num_classes, None, ignore_index)
  samples, _ = _labels(samples, "samples", num_classes, ignore_index)
  references, _ = _labels(references, "references", num_classes, ignore_index)
  _check_pair(samples, "samples", references, "references")
  if not eps > 0:
    raise ValueError(f"`eps` must be > 0; got {eps}.")
  batch, s = samples.shape[:2]
  r = references.shape[1]
  pixels = samples.shape[2] * samples.shape[3]
  bins = num_classes + 1  # the last bin collects void sample pixels
  valid_all = _void_valid(references, ignore_index)
  log0 = np.log(eps)
  delta = np.log1p(eps) - log0  # E_s[log(s_c + eps)] = log0 + sbar_c * delta
  out = np.empty(batch)
  step = _chunk_images((2 * s + bins + 3 * r) * pixels)
  for lo in range(0, batch, step):
    hi = min(batch, lo + step)
    n = hi - lo
    xs = samples[lo:hi].reshape(n, s, pixels)
    ys = references[lo:hi].reshape(n, r, pixels)
    # Per-pixel class counts over the samples, [n, P, C + 1].
    labels = xs if ignore_index is None else np.where(xs == ignore_index, num_classes, xs)
    cell = (np.arange(n)[:, None, None] * pixels + np.arange(pixels)[None, None, :]) * bins
    counts = np.bincount((cell + labels).ravel(), minlength=n * pixels * bins)
    counts = counts.reshape(n, pixels, bins)
    # A = -sum_c sbar_c (log0 + sbar_c delta), with sbar_c = counts_c / S.
    in_class = (s - counts[..., num_classes]) / s
    square = np.einsum("npc,npc->np", counts[..., :num_classes], counts[..., :num_classes])
    a_map = -(log0 * in_class + delta * square / (s * s))
    # Pixel-major layout from here on: [n, P, R].
    yi = np.ascontiguousarray(ys.transpose(0, 2, 1)).astype(np.intp)
    if valid_all is None:
      valid = np.ones((n, pixels, 1), bool)
    else:
      valid = valid_all[lo:hi].reshape(n, pixels, 1)
      yi = np.where(valid, yi, 0)
    # B_j = -(log0 + sbar_{y_j} delta).
    agree = np.take_along_axis(counts, yi, axis=2) / s
    b_maps = -(log0 + delta * agree)
    out[lo:hi] = _mean_pearson(a_map[:, :, None], b_maps, valid, np.full((n, r), 1.0 / r))
  return out


def _mean_pearson(a, b, valid, weights):
  """Weighted mean over references of the Pearson correlation of `a` `[n, P, 1]` and `b`
  `[n, P, R]`, with `weights` `[n, R]`.

  Pixels where `valid` `[n, P, 1]` is False are ignored. A map whose variance is zero (up to
  rounding: below 1e-24 of its mean square) gives NaN; NaN correlations are dropped from the
  mean with the weights renormalised over the rest; the mean is NaN if no weight is left.
  """
  w = valid.astype(np.float64)
  wt = np.swapaxes(w, 1, 2)  # [n, 1, P]: sums over pixels are matrix-vector products
  count = np.maximum(w.sum(axis=1), 1.0)  # [n, 1]
  ma = (wt @ a)[:, 0] / count  # [n, 1]
  mb = (wt @ b)[:, 0] / count  # [n, R]
  da = (a - ma[:, None, :]) * w
  db = b - mb[:, None, :]
  va = (np.swapaxes(da, 1, 2) @ da)[:, 0]  # [n, 1]
  vb = (wt @ (db * db))[:, 0]  # [n, R]
  cov = (np.swapaxes(da, 1, 2) @ db)[:, 0]  # [n, R]
  sq_a = va + count * ma * ma  # the mean squares, for the zero-variance test
  sq_b = vb + count * mb * mb
  ok = (va > 1e-24 * sq_a) & (vb > 1e-24 * sq_b)
  ncc = np.divide(cov, np.sqrt(va * vb), out=np.full(cov.shape, np.nan), where=ok)
  finite = ~np.isnan(ncc)
  num = np.where(finite, weights * np.where(finite, ncc, 0.0), 0.0).sum(axis=-1)
  den = np.where(finite, weights, 0.0).sum(axis=-1)
  return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)
