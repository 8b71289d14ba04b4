"""`bench --t5-memory`: what each T5 memory option leaves on the GPU, and (on a CUDA GPU) the peak of a generation.

Two measurements per option (core/t5_memory.py):
- the weights the GPU holds, counted from the architecture built on PyTorch's meta device (no weights are
  made or read): at rest between prompts, and while T5 encodes a new prompt. Exact on any machine.
- on a CUDA GPU, torch's peak allocated memory from loading the models to the end of one generation of a
  new prompt (so T5 encodes it) at the chosen size, both sides, guidance on: what decides whether a card
  fits. Elsewhere: not measured.

Options: "together" (every model on the GPU), "offload" (--t5-offload), "t5-on-cpu" (--t5-device cpu),
"released" (T5 freed after encoding, as `dpg generate` does).
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass

import torch
from accelerate import init_empty_weights

from ella_demo.core.devices import DTYPES, choose_placement
from ella_demo.core.engine import generate
from ella_demo.core.t5_memory import release_t5
from ella_demo.loading.additions import T5Memory, keep_t5_features
from ella_demo.loading.models import load_models
from ella_demo.loading.presets import build_weightless_components
from ella_demo.loading.shipped import read_weightless_configs

OPTIONS = ("together", "offload", "t5-on-cpu", "released")
COMPONENTS = ("unet", "vae", "text_encoder", "ella", "t5")
# The architecture whose sizes each preset has (sd15 is the published one, which random-sd15 copies).
ARCHITECTURES = {"sd15": "random-sd15", "random-sd15": "random-sd15", "tiny": "tiny"}
PROMPT = "a red cube on the left of a small blue ball, on a wooden table under warm light"


@dataclass(frozen=True)
class MemoryBench:
    """What to measure: `preset`'s models in `dtype` (default fp16), one `size` x `size` image, `steps` steps."""

    preset: str = "tiny"
    dtype: str = "fp16"
    size: int = 512
    steps: int = 2


def component_parameters(preset: str) -> dict[str, int]:
    """Parameters and buffers of each model of `preset`'s architecture, counted on the meta device."""
    configs = read_weightless_configs(ARCHITECTURES[preset])
    with init_empty_weights(include_buffers=True):
        parts = build_weightless_components(configs, choose_placement("cpu"), seed=0)
    return {
        name: sum(tensor.numel() for tensor in (*getattr(parts, name).parameters(), *getattr(parts, name).buffers()))
        for name in COMPONENTS
    }


def gpu_weights_mb(parameters: dict[str, int], option: str, bytes_per_value: int) -> dict[str, float]:
    """MiB of weights on the GPU under `option`: between prompts, and while T5 encodes a prompt not cached."""
    everything = sum(parameters.values()) * bytes_per_value / 2**20
    without_t5 = everything - parameters["t5"] * bytes_per_value / 2**20
    at_rest = everything if option == "together" else without_t5
    encoding = without_t5 if option == "t5-on-cpu" else everything  # "released" encodes on the GPU first
    return {"at_rest_mb": round(at_rest, 1), "while_encoding_mb": round(encoding, 1)}


def measure_peak_mb(bench: MemoryBench, option: str) -> float:
    """Peak CUDA memory under `option` over loading the models, encoding a new prompt and generating from it
    (loading and encoding included: a card must hold every moment); the models are freed afterwards."""
    memory = {"offload": T5Memory(offload=True), "t5-on-cpu": T5Memory(t5_device="cpu")}.get(option, T5Memory())
    torch.cuda.reset_peak_memory_stats()
    models = load_models(bench.preset, device="cuda", dtype=bench.dtype, memory=memory)
    with tempfile.TemporaryDirectory() as folder:
        if option == "released":
            keep_t5_features(models, folder)
            for prompt in ("", PROMPT):
                models.t5_encoder.encode(prompt)
            release_t5(models)
        generate(models, PROMPT, num_inference_steps=bench.steps, height=bench.size, width=bench.size)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    del models
    gc.collect()
    torch.cuda.empty_cache()
    return round(peak, 1)


def run_memory_bench(bench: MemoryBench) -> dict:
    """Every option's GPU weights, and its measured peak where a CUDA GPU is present (else None)."""
    parameters = component_parameters(bench.preset)
    bytes_per_value = torch.tensor([], dtype=DTYPES[bench.dtype]).element_size()
    measured = torch.cuda.is_available()
    rows = []
    for option in OPTIONS:
        row = {"option": option, **gpu_weights_mb(parameters, option, bytes_per_value)}
        row["peak_mb"] = measure_peak_mb(bench, option) if measured else None
        rows.append(row)
    return {
        "preset": bench.preset, "dtype": bench.dtype, "size": bench.size, "steps": bench.steps,
        "device": torch.cuda.get_device_name() if measured else "no CUDA GPU: peaks not measured",
        "parameters": parameters, "options": rows,
    }  # fmt: skip


def format_memory_table(report: dict) -> str:
    lines = [
        f"T5 memory options, preset {report['preset']} in {report['dtype']}, {report['size']}x{report['size']}, "
        f"{report['steps']} steps, on {report['device']}",
        "parameters: " + ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in report["parameters"].items()),
        f"{'option':<12}{'GPU weights at rest':>22}{'while T5 encodes':>20}{'peak (measured)':>18}",
    ]
    for row in report["options"]:
        peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f} MiB"
        lines.append(
            f"{row['option']:<12}{row['at_rest_mb']:>18.0f} MiB{row['while_encoding_mb']:>16.0f} MiB{peak:>18}"
        )
    return "\n".join(lines)
