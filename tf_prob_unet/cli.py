"""What the thin absl mains share: no positional arguments, quiet logs, one-line errors."""

import sys

from absl import app
from absl import logging

from tf_prob_unet import errors
from tf_prob_unet import extras


class _DropTfdsDtypeDeprecation:
  """Drops TFDS 4.9's `FeatureConnector.dtype` deprecation notice, which its own `Tensor`
  decoder logs for every encoded feature read (this package asks for `tf_dtype`)."""

  @staticmethod
  def filter(record):
    return "`FeatureConnector.dtype` is deprecated" not in record.getMessage()


def main_with_errors(body):
  """An absl `main` that runs `body()` and turns a `ValueError` (bad input), a
  `FloatingPointError` (training diverged) or a `MissingExtraError` (an optional dependency not
  installed) into one line and exit code 2, and a failed write (`errors.WriteError`) into one
  line and exit code 74.

  Args:
    body: a callable without arguments that reads the flags and does the work.
  """
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(_DropTfdsDtypeDeprecation)
    try:
      body()
    except (ValueError, FloatingPointError, extras.MissingExtraError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(errors.EXIT_BAD_INPUT)
    except errors.WriteError as e:  # the path named; nothing half-written
      print(f"error: {e}", file=sys.stderr)
      sys.exit(errors.EXIT_WRITE_FAILED)
  return main
