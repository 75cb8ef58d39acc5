"""VISOLO (Han et al., CVPR 2022): grid-based online video instance segmentation with a memory of grid features."""
