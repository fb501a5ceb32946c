"""Support for checking the method: planted models with known circuits, one-pass node
baselines (attribution patching, activation size) and tiny-model builders. Not needed to
find a circuit; nothing below imports it."""
