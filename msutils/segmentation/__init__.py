"""Lesion segmentation: nnU-Net bridge, FLAIR slices, overlap metrics, lesion instances, slice-level classification, U-Nets and their training, losses, saliency."""
