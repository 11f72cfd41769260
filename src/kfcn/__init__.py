"""kfcn: fully convolutional networks for semantic segmentation on Pascal VOC."""

__version__ = "0.1.0"
