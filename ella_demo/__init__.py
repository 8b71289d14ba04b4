"""ELLA Explorer: compare SD1.5 with CLIP and with ELLA, and look inside the connector."""

from ella_demo.core.connector import ELLA, EllaConfig
from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.core.results import GenerationResult
from ella_demo.loading.models import load_models

__all__ = ["ELLA", "EllaConfig", "GenerationResult", "LoadedModels", "generate", "load_models"]
