"""ELLA Explorer: compare SD1.5 with CLIP and with ELLA, and look inside the connector."""

from .connector import ELLA, EllaConfig
from .engine import GenerationResult, generate
from .loading import LoadedModels, load_models

__all__ = ["ELLA", "EllaConfig", "GenerationResult", "LoadedModels", "generate", "load_models"]
