"""The run folder's file names, in one place (torch-free: every room may import them).

A unified run folder holds :data:`CONFIG_FILE` (what was trained, the calibration, the format),
:data:`MODEL_FILE` (the trained tensors), :data:`STATE_FILE` (weights + optimiser to resume; deleted from the
demo's default model), :data:`LOG_FILE` (one JSON line per epoch), and what is derived from the weights:
:data:`METRICS_FILE` (``eval``) and :data:`PREDICTIONS_DIR` (``predict``). A per-class run is a folder with
:data:`SETTING_FILE` and one unified run folder per category."""

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
SETTING_FILE = "setting.json"
