"""ELLA Explorer: compare SD1.5 with CLIP and with ELLA, and look inside the connector."""

from .connector import ELLA, EllaConfig
from .loading import LoadedModels, load_models

__all__ = ["ELLA", "EllaConfig", "LoadedModels", "load_models"]
