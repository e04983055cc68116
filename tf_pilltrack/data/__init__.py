"""The data libraries: photo folders and zips in (`ingestion`), the prepared splits (`dataset`,
`preparation`), class-balanced batches (`sampling`, `augmentation`) and the streaming input (`shards`).

This file imports nothing."""
