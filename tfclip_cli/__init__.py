"""tfclip: video-based person re-identification with TF-CLIP."""

__version__ = "0.1.0"
