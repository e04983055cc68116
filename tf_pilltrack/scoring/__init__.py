"""The scoring libraries: retrieval metrics (`metrics`), few-shot episodes (`episodes`), the
colour/shape baseline (`baseline`), the naming rule's calibration (`calibration`), the counter
page's confidence tiers (`tiers`, on real photos placed on a tray by `tray`) and the evaluation's
embedding and scoring of every model (`evaluation`).

This file imports nothing."""
