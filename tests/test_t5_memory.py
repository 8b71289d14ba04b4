"""T5's memory options on the tiny preset: the features store on disk, releasing T5, offloading, T5 on the CPU."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ella_demo import generate, load_models
from ella_demo.core.devices import DeviceError, Placement, choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.settings import GenerationSettings
from ella_demo.core.t5_memory import offload_between_encodings, release_t5
from ella_demo.core.text_encoding import T5PromptEncoder, TextEncoderReleasedError
from ella_demo.dpg.generation import encode_then_release_t5
from ella_demo.loading.additions import T5Memory, t5_identity
from ella_demo.loading.feature_store import FeatureStore

PROMPT = "a red cube left of a blue ball"
RUN = {"prompt": PROMPT, "seed": 2, "num_inference_steps": 2, "output_type": "latent", "sides": "ella"}


class CountingRuns:
    """A `running` context for an encoder that counts how often its model ran."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        return torch.no_grad()


def encoder_with_store(tiny, folder, model: str = "tiny|seed 0") -> tuple[T5PromptEncoder, CountingRuns]:
    encoder = T5PromptEncoder(tiny.t5, tiny.t5_tokenizer)
    encoder.store = FeatureStore(folder, model)
    encoder.running = runs = CountingRuns()
    return encoder, runs


def assert_same_encoding(first, second) -> None:
    assert torch.equal(first.features, second.features)
    assert torch.equal(first.attention_mask, second.attention_mask)
    assert (first.tokens, first.words, first.offsets, first.dropped_tokens, first.max_length) == (
        second.tokens, second.words, second.offsets, second.dropped_tokens, second.max_length
    )  # fmt: skip


def test_a_stored_prompt_is_read_back_whole_by_a_new_encoder_without_running_t5(tiny, tmp_path):
    first, first_runs = encoder_with_store(tiny, tmp_path)
    encoded = first.encode(PROMPT, 128)
    assert first_runs.count == 1 and len(first.store) == 1
    second, second_runs = encoder_with_store(tiny, tmp_path)  # a new process: empty memory cache, same folder
    assert_same_encoding(second.encode(PROMPT, 128), encoded)
    assert second_runs.count == 0


@pytest.mark.parametrize(
    "change",
    [
        {"length": "flexible"},  # another length
        {"model": "sd15|google/flan-t5-xl"},  # another encoder
        {"prompt": PROMPT + "."},  # another prompt
    ],
)
def test_the_store_keys_on_prompt_length_and_model(tiny, tmp_path, change):
    first, _ = encoder_with_store(tiny, tmp_path)
    first.encode(PROMPT, 128)
    second, runs = encoder_with_store(tiny, tmp_path, change.get("model", "tiny|seed 0"))
    second.encode(change.get("prompt", PROMPT), change.get("length", 128))
    assert runs.count == 1 and len(second.store) == 2


def test_the_store_keys_on_dtype_and_the_kind_of_device(tmp_path):
    stores = FeatureStore(tmp_path, "m")
    cpu = torch.device("cpu")
    assert stores.path(PROMPT, 128, torch.float16, cpu) != stores.path(PROMPT, 128, torch.float32, cpu)
    assert stores.path(PROMPT, 128, torch.float32, cpu) != stores.path(PROMPT, 128, torch.float32, torch.device("cuda"))


def test_a_damaged_entry_is_encoded_again(tiny, tmp_path):
    first, _ = encoder_with_store(tiny, tmp_path)
    expected = first.encode(PROMPT, 128)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])  # a disk that filled up, a copy cut short
    second, runs = encoder_with_store(tiny, tmp_path)
    assert_same_encoding(second.encode(PROMPT, 128), expected)
    assert runs.count == 1
    assert not list(tmp_path.glob("*.partial"))


def test_after_encoding_a_jobs_prompts_t5_is_released_and_images_stay_the_same(tmp_path):
    models = load_models("tiny", device="cpu")
    before = generate(models, **RUN).latents["ella"]
    prompts = [PROMPT, "three green birds"]
    settings = GenerationSettings(prompt="")
    encoded, needed = encode_then_release_t5(models, prompts, settings, tmp_path / "store")
    assert (encoded, needed) == (3, 3)  # the two prompts and the empty negative prompt
    assert models.t5 is None and models.t5_encoder.model is None
    models.t5_encoder.cache.clear()  # only the store is left to answer
    assert torch.equal(generate(models, **RUN).latents["ella"], before)
    assert generate(models, **{**RUN, "sides": "clip"}).latents["clip"] is not None  # CLIP never needed T5
    with pytest.raises(TextEncoderReleasedError, match="'a purple cross' was not among them"):
        generate(models, **{**RUN, "prompt": "a purple cross"})


def test_a_second_job_on_the_same_store_encodes_nothing(tmp_path):
    settings = GenerationSettings(prompt="")
    for expected in ((2, 2), (0, 2)):
        models = load_models("tiny", device="cpu", memory=T5Memory(cache=tmp_path))
        assert models.t5_encoder.store.model == t5_identity(models) == "tiny|random (seed 0), tiny architecture"
        assert encode_then_release_t5(models, [PROMPT], settings, tmp_path / "unused") == expected
    assert not (tmp_path / "unused").exists()  # --t5-cache wins over the job's default folder


def test_offloading_moves_t5_back_after_each_encoding_and_never_for_a_cached_prompt(tiny, monkeypatch):
    plain = T5PromptEncoder(tiny.t5, tiny.t5_tokenizer).encode(PROMPT).features
    models = load_models("tiny", device="cpu")
    offload_between_encodings(models.t5_encoder, torch.device("cpu"))  # on a GPU machine: cuda
    offloads = []
    hook = type(models.t5._hf_hook)  # accelerate's CpuOffload: init_hook is what moves the model to the CPU
    monkeypatch.setattr(hook, "init_hook", lambda self, module: offloads.append(module) or module)
    assert torch.equal(models.t5_encoder.encode(PROMPT).features, plain)
    assert offloads == [models.t5]  # back to the CPU once the encoding is done
    models.t5_encoder.encode(PROMPT)
    assert offloads == [models.t5]  # a cached prompt never moves it
    models.t5_encoder.encode("three green birds")
    assert len(offloads) == 2


def test_offloading_is_refused_where_t5_already_runs_on_the_cpu():
    with pytest.raises(InputError, match="T5 runs on the CPU here"):
        load_models("tiny", device="cpu", memory=T5Memory(offload=True))


def test_t5_on_the_cpu_runs_in_fp32_beside_a_gpu_and_says_so():
    split = Placement(torch.device("cuda"), torch.float16, torch.float32, torch.device("cpu"))
    assert "T5 runs on the CPU in fp32, not in the fp16 ELLA was trained with" in split.t5_caveat
    assert split.describe() == "cuda (fp16, T5 in fp32 on cpu)"
    together = choose_placement("cpu", t5_device="cpu")
    assert together.t5_caveat is None and together.t5_dtype == torch.float32
    with pytest.raises(DeviceError, match="T5 dtype fp16 is not supported on cpu"):
        choose_placement("cpu", t5_dtype="fp16", t5_device="cpu")


def test_an_offloaded_t5_rests_on_the_cpu_from_the_start():
    on_gpu = Placement(torch.device("cuda"), torch.float16, torch.float16)
    assert T5Memory(offload=True).resting_device(on_gpu) == torch.device("cpu")
    assert T5Memory().resting_device(on_gpu) == torch.device("cuda")


def test_releasing_an_offloaded_t5_frees_it(tmp_path):
    models = load_models("tiny", device="cpu")
    offload_between_encodings(models.t5_encoder, torch.device("cpu"))
    models.t5_encoder.use_store(FeatureStore(tmp_path, "tiny"))
    models.t5_encoder.encode(PROMPT)
    t5 = weakref.ref(models.t5)
    release_t5(models)
    gc.collect()
    assert t5() is None  # nothing (the offload hook included) keeps the model alive
    assert models.t5_encoder.encode(PROMPT).features.shape[1] > 0  # from the store
