"""Figures written next to the numbers: sample grids, GED distributions, mode frequencies,
reliability diagrams, flip rates.

Every function takes NumPy arrays and a path, writes a PNG atomically and returns the path
(`sample_grid_image` returns the grid as an array instead, for TensorBoard).
"""

import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
  os.close(fd)
  fig.savefig(tmp, dpi=100, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _label_cmap(num_classes):
  return plt.get_cmap("gray" if num_classes <= 2 else "tab20", max(num_classes, 2))


MAX_REFERENCES = 8  # references shown per row of a sample grid


def sample_grid(path, images, references, samples, num_classes=2, reference_titles=None,
                max_images=6, max_samples=8, max_references=MAX_REFERENCES):
  """Fig. 3 style: per row an image, its references and model samples, as a PNG at `path`.

  Arguments after `path` as `sample_grid_figure`.
  """
  return _save(sample_grid_figure(images, references, samples, num_classes, reference_titles,
                                  max_images, max_samples, max_references), path)


def sample_grid_image(images, references, samples, num_classes=2, **kwargs):
  """The `sample_grid` figure as a `[1, H, W, 4]` uint8 RGBA array (for `tf.summary.image`)."""
  fig = sample_grid_figure(images, references, samples, num_classes, **kwargs)
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba()).copy()
  plt.close(fig)
  return image[np.newaxis]


def sample_grid_figure(images, references, samples, num_classes=2, reference_titles=None,
                       max_images=6, max_samples=8, max_references=MAX_REFERENCES):
  """The matplotlib figure of `sample_grid`: per row an image, its references and samples.

  Args:
    images: `[B, H, W, C]` float in [0, 1] (channel 0, or RGB if C >= 3, is shown).
    references: `[B, R, H, W]` int label maps.
    samples: `[B, S, H, W]` int label maps.
    num_classes: for the colour map.
    reference_titles: optional `[B][R]` titles (e.g. mode probabilities).
    max_images, max_samples, max_references: the first ones shown.

  Returns:
    The figure (close it with `plt.close`).
  """
  b = min(len(images), max_images)
  r = min(references.shape[1], max_references)
  s = min(samples.shape[1], max_samples)
  cols = 1 + r + s
  fig, axes = plt.subplots(b, cols, figsize=(1.3 * cols, 1.3 * b), squeeze=False)
  cmap = _label_cmap(num_classes)
  for i in range(b):
    img = images[i]
    axes[i, 0].imshow(img[..., :3] if img.shape[-1] >= 3 else img[..., 0], cmap="gray",
                      vmin=0, vmax=1)
    for j in range(r):
      axes[i, 1 + j].imshow(references[i, j], cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1),
                            interpolation="nearest")
      if reference_titles is not None:
        axes[i, 1 + j].set_title(reference_titles[i][j], fontsize=7)
    for j in range(s):
      axes[i, 1 + r + j].imshow(samples[i, j], cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1),
                                interpolation="nearest")
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title("image", fontsize=7)
  if s:
    axes[0, 1 + r].set_title("samples ->", fontsize=7)
  return fig


def ged_distribution(path, per_image_ged, labels=None):
  """Fig. 4 style: per-image GED against the number of samples, one box per count (and model).

  Args:
    path: output PNG.
    per_image_ged: `{model: {n: [per-image values]}}`.
  """
  models = list(per_image_ged)
  counts = sorted({int(n) for m in models for n in per_image_ged[m]})
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(counts) * len(models), 3.2))
  width = 0.8 / len(models)
  for k, model in enumerate(models):
    data = [np.asarray(per_image_ged[model][str(n)], float) for n in counts]
    data = [d[np.isfinite(d)] for d in data]
    pos = np.arange(len(counts)) + (k - (len(models) - 1) / 2) * width
    bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
    color = plt.get_cmap("tab10")(k)
    for patch in bp["boxes"]:
      patch.set_facecolor(color)
    ax.plot([], [], color=color, lw=6, label=model)
  ax.set_xticks(np.arange(len(counts)))
  ax.set_xticklabels([str(n) for n in counts])
  ax.set_xlabel("samples per image")
  ax.set_ylabel("squared GED per image")
  if len(models) > 1:
    ax.legend(fontsize=7)
  return _save(fig, path)


def mode_frequencies(path, freq_true, freq_sampled, mode_names=None):
  """Fig. 5 style: sampled versus true mode frequencies (pooled over the split).

  Args:
    freq_true: `[M]`.
    freq_sampled: `{label: [M]}` (e.g. one entry per model or sample count).
  """
  m = len(freq_true)
  names = list(mode_names) if mode_names is not None and len(mode_names) == m else \
      [str(i) for i in range(m)]
  return _grouped_bars(path, names, {"true": freq_true, **freq_sampled}, "frequency")


def _grouped_bars(path, names, series, ylabel, width_per_bar=0.45):
  """One group of bars per name, one bar per series (`{label: [len(names)] values}`)."""
  m = len(names)
  width = 0.8 / len(series)
  fig, ax = plt.subplots(figsize=(max(4, width_per_bar * m * len(series)), 3.2))
  for k, (label, values) in enumerate(series.items()):
    ax.bar(np.arange(m) + (k - (len(series) - 1) / 2) * width, values, width, label=label)
  ax.set_xticks(np.arange(m))
  ax.set_xticklabels(names, rotation=45 if m > 6 else 0, fontsize=7,
                     ha="right" if m > 6 else "center")
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  return _save(fig, path)


def reliability_diagram(path, diagrams):
  """Reliability diagram: mean observed against mean predicted per-pixel frequency per bin.

  Args:
    path: output PNG.
    diagrams: `{label: metrics.reliability_diagram(...)}` (bins, means and `ece`).
  """
  fig, ax = plt.subplots(figsize=(3.6, 3.4))
  ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="calibrated")
  for k, (label, diagram) in enumerate(diagrams.items()):
    pairs = [(p, o) for p, o in zip(diagram["predicted"], diagram["observed"]) if p is not None]
    if pairs:
      x, y = zip(*pairs)
      ax.plot(x, y, marker="o", ms=3, color=plt.get_cmap("tab10")(k),
              label=f"{label} (ECE {diagram['ece']:.3f})")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("frequency over the samples")
  ax.set_ylabel("frequency over the references")
  ax.legend(fontsize=7)
  return _save(fig, path)


def flip_rates(path, rates):
  """Per switchable class: sampled flip frequency against its true probability (bar chart).

  Args:
    path: output PNG.
    rates: `{label: {class name: {"sampled": float, "true": float, ...}}}`.
  """
  names = list(next(iter(rates.values())))
  series = {"true": [next(iter(rates.values()))[n]["true"] for n in names]}
  series.update({label: [r[n]["sampled"] for n in names] for label, r in rates.items()})
  return _grouped_bars(path, names, series, "flip frequency", width_per_bar=0.6)
