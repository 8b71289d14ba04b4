"""The Gradio app: layout, handlers and serving limits over the same functions the CLI calls."""

from ella_demo.app.layout import build_app
from ella_demo.app.serving import ServingLimits, launch_app

__all__ = ["ServingLimits", "build_app", "launch_app"]
