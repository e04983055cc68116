"""The training libraries: the teacher and student models (`models`, `efficientnet`), how each is
trained (`teacher`, `distiller`), the open-set monitor and training record (`monitor`), multi-worker
training (`distribution`) and MLflow (`tracking`).

This file imports nothing."""
