"""visjax: video instance segmentation (IDOL, VITA, VISOLO, IAI) in JAX/Flax.

Importable without TensorFlow or torch: TensorFlow is used only inside `data_pipeline/`, torch only by the
checkpoint reader (`visjax.convert`) when reading `.pth` files and by parity tests.
"""

__version__ = '0.1.0.dev0'
