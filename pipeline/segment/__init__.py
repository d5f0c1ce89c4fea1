"""Lumen segmentation: classical thresholding (``classical``); learned models may be added beside it.

Every method returns a :class:`~pipeline.segment.classical.LumenSegmentation`.
"""

from pipeline.segment.classical import LumenSegmentation, SegmentationError, segment_lumen

__all__ = ["LumenSegmentation", "SegmentationError", "segment_lumen"]
