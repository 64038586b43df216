"""The export binaries: `python -m tf_prob_unet.export COMMAND [--flags]`.

Commands (each a thin absl main over `tf_prob_unet.export_lib`, also runnable as
`python -m tf_prob_unet.export.COMMAND`):

- `saved_model`: a training run -> a TF Serving SavedModel `BASE/NAME/N/`.
- `tflite`: a SavedModel export -> TFLite models (needs the `[tflite]` extra to run them).
- `predict_request`: images -> a TF Serving REST `:predict` request body on stdout.
"""

COMMANDS = ("saved_model", "tflite", "predict_request")
