"""Hugging Face Space entry point for ELLA Explorer (ZeroGPU-ready).

On ZeroGPU only the model work runs on the GPU: `spaces.GPU` wraps the generate and probe
handlers, which return PIL images and NumPy arrays, never CUDA tensors. Without the `spaces`
package (a local run) the wrapper does nothing.
"""

from __future__ import annotations

import os

from ella_demo import load_models
from ella_demo.app import build_app, launch_app

GPU_SECONDS = 120  # one 25-step pair with tracing, with room for the first call's warm-up

try:
    import spaces

    def gpu_wrapper(function):
        return spaces.GPU(duration=GPU_SECONDS)(function)

except ImportError:

    def gpu_wrapper(function):
        return function


def create_app(preset: str = "sd15"):
    """Load the models once, at start-up, and build the Blocks app around them."""
    return build_app(load_models(preset), gpu_wrapper=gpu_wrapper)


if __name__ == "__main__":
    # Spaces sets GRADIO_SERVER_NAME=0.0.0.0; a local run stays on this machine.
    launch_app(
        create_app(os.environ.get("ELLA_PRESET", "sd15")),
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
