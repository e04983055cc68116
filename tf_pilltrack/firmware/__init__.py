"""The Cortex-M firmware: its build, emulated run and measurement (`build`) and its main.cc, a
C++ file filled in with string.Template.

This file imports nothing."""
