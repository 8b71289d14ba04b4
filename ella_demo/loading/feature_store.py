"""Encoded prompts on disk: the persistent T5 features store of core/t5_memory.py's memory options.

One safetensors file per (prompt, length, dtype, kind of device, model) holds the features, the attention mask and, as
metadata, the tokens, words and offsets, so a stored prompt is as good as a freshly encoded one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ella_demo.core.text_encoding import TextEncoding, Word

FORMAT_VERSION = 2  # changes when what an entry holds changes; older entries are then encoded again


class FeatureStore:
    """Encoded prompts as files in `folder`, one per (prompt, length, dtype, kind of device, model): safe for
    several processes.

    `model` names the encoder (its source), so features of different encoders never mix. Entries are
    written to a temporary file and renamed, so a killed run or a second process never reads half a file.
    """

    def __init__(self, folder: str | Path, model: str):
        self.folder = Path(folder)
        self.model = model
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, prompt: str, length, dtype: torch.dtype, device: torch.device) -> Path:
        """The entry of (prompt, length, dtype, model), and the kind of device that encoded it: a CPU's fp32
        features differ slightly from a GPU's."""
        key = json.dumps([FORMAT_VERSION, prompt, str(length), str(dtype), device.type, self.model])
        return self.folder / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()}.safetensors"

    def get(self, prompt: str, length, dtype: torch.dtype, device: torch.device) -> TextEncoding | None:
        """The stored encoding with its tensors on `device`, or None (absent or unreadable: encode it again)."""
        path = self.path(prompt, length, dtype, device)
        try:
            with safe_open(path, framework="pt", device=str(device)) as handle:
                record = json.loads(handle.metadata()["encoding"])
                tensors = {name: handle.get_tensor(name) for name in ("features", "attention_mask")}
        except (OSError, SafetensorError, ValueError, KeyError, TypeError):
            return None
        if record["prompt"] != prompt:  # a hash collision, however unlikely, never returns another prompt
            return None
        words = tuple(Word(text, tuple(indices), special) for text, indices, special in record["words"])
        return TextEncoding(
            prompt=prompt, features=tensors["features"], attention_mask=tensors["attention_mask"],
            tokens=tuple(record["tokens"]), words=words, dropped_tokens=record["dropped_tokens"],
            max_length=record["max_length"], offsets=tuple(tuple(pair) for pair in record["offsets"]),
        )  # fmt: skip

    def put(self, encoding: TextEncoding, length, dtype: torch.dtype) -> None:
        record = {
            "prompt": encoding.prompt, "tokens": encoding.tokens, "dropped_tokens": encoding.dropped_tokens,
            "max_length": encoding.max_length, "offsets": encoding.offsets,
            "words": [[word.text, word.token_indices, word.is_special] for word in encoding.words],
        }  # fmt: skip
        path = self.path(encoding.prompt, length, dtype, encoding.features.device)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        tensors = {"features": encoding.features, "attention_mask": encoding.attention_mask}
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, temporary,
                  metadata={"encoding": json.dumps(record)})  # fmt: skip
        os.replace(temporary, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*.safetensors"))
