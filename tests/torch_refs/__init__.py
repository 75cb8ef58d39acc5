"""Independent PyTorch (CPU) reference modules for parity tests, with the official attribute names.

Written from the behaviour of detectron2's ResNet (FrozenBN), torchvision/mmdet's ResNet and Mask2Former's
D2SwinTransformer, so their `state_dict()` keys equal the official checkpoints' keys, and of the official sine
position embeddings (`position_ref`). They compute everything with torch and import nothing from visjax,
pallas_kernels or data_pipeline. Only tests import these.
"""
