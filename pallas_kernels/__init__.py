"""Pallas kernels (with XLA fallbacks) used by visjax models."""
