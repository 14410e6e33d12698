"""Segmentation post-processing."""
