"""The TFLite libraries: int8 conversion (`conversion`), TFLite Micro and the C array (`micro`),
runtime parity (`parity`), invoke timing (`timing`) and the profile's budgets (`budget`).

This file imports nothing."""
