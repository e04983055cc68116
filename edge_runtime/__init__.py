"""PillTrack's device client: identify pills with a TFLite embedding model and an Annoy
gallery, enroll new ones, without TensorFlow (numpy, Annoy, OpenCV, Pillow and a TFLite
runtime only). The training pipeline imports some of its modules too (preprocessing, to embed
images; bundle, to write the bundle).

This file imports nothing: importing one module of the client (say `edge_runtime.storage`)
runs only that module and what it imports, so a training stage depends on those files alone
and an edit to device-only code leaves the training stages up to date."""
