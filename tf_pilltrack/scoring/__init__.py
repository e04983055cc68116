"""The scoring libraries: retrieval metrics (`metrics`), few-shot episodes (`episodes`), the
colour/shape baseline (`baseline`), the naming rule's calibration (`calibration`), the counter
page's confidence tiers (`tiers`, on real photos placed on a tray by `tray`) and the evaluation's
embedding and scoring of every model (`evaluation`) and the reader of the figures it writes,
metrics/evaluation.json (`results`).

This file imports nothing."""
