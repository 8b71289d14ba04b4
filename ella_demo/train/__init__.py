"""Connector training: ELLA's recipe against a frozen SD1.5-family UNet, VAE and text encoder."""

from ella_demo.train.config import TrainConfig
from ella_demo.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
