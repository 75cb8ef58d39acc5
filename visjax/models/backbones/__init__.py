"""Backbones: ResNet (detectron2 and torchvision/mmdet layouts) and Swin (Mask2Former's D2SwinTransformer)."""

from visjax.models.backbones.resnet import ResNet, resnet_d2, resnet_tv
from visjax.models.backbones.swin import SWIN_B, SWIN_L, SWIN_S, SWIN_T, SwinConfig, SwinTransformer
