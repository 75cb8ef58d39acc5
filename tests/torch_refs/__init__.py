"""Independent PyTorch (CPU) reference modules for parity tests, with the official attribute names.

Written from the behaviour of detectron2's ResNet (FrozenBN), torchvision/mmdet's ResNet and Mask2Former's
D2SwinTransformer, so their `state_dict()` keys equal the official checkpoints' keys. Only tests import these.
"""
