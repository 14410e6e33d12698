"""Trained models on disk: checkpoints (weights-only), resumable training state, and
self-describing model folders (``fsc train``). Methods save and load through this layer."""
