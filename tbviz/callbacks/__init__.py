"""Keras callbacks, one per file, each writing TensorBoard summaries."""
