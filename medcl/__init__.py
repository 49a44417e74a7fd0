"""medcl: semi-supervised medical image segmentation with contrastive learning."""

__version__ = "0.1.0"
