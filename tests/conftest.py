"""Shared pytest setup: CPU JAX, float32 defaults, and fixtures for the synthetic dataset."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
