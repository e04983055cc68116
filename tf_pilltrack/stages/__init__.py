"""One module per `pilltrack` command, named as the command and its dvc stage: each holds the
command's `run(params, echo)` and its printing, and imports libraries, never another stage.

This file imports nothing."""
