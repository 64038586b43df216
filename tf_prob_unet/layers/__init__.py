"""Keras 3 layers of the Probabilistic U-Net: one concept per file."""

from tf_prob_unet.layers.conv_block import ConvBlock
from tf_prob_unet.layers.encoder import Encoder
from tf_prob_unet.layers.unet import UNet
from tf_prob_unet.layers.gaussian_head import AxisAlignedConvGaussian
from tf_prob_unet.layers.fcomb import FComb
from tf_prob_unet.layers.segmentation_heads import SegmentationHeads
from tf_prob_unet.layers.res_block import ResBlock
from tf_prob_unet.layers.hierarchical_core import HierarchicalCore, StitchingDecoder

__all__ = ["ConvBlock", "Encoder", "UNet", "AxisAlignedConvGaussian", "FComb",
           "SegmentationHeads", "ResBlock", "HierarchicalCore", "StitchingDecoder"]
