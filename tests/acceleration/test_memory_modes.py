"""Memory modes on CPU: fp8 weight storage saves its bytes and stays within its bound, the official FP8 file is read
without up-casting, group offloading computes the same result block by block, ``auto`` says what it picked, and a
mode the machine cannot run is refused with one clear line."""

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from step1x_edit.acceleration import memory
from step1x_edit.acceleration.options import Acceleration, apply_acceleration, check_combination
from step1x_edit.errors import InvalidValueError, UnsupportedModeError
from step1x_edit.models.presets import build_transformer
from step1x_edit.pipeline import load_pipeline
from step1x_edit.testing.compare import relative_error
from step1x_edit.testing.tiny import save_tiny_official, tiny_pipeline

# fp8 (e4m3, 3 mantissa bits, unscaled) weights against float32 ones: one mid-preset DiT forward measured 0.036 and
# 0.040 relative error (seeds 0, 1), a 4-step tiny edit's latents about 0.013. Random weights of std 0.02 sit partly
# in e4m3's subnormal range, which makes these errors larger than a trained model's; the bounds leave room for seeds.
FP8_FORWARD_BOUND = 0.08
FP8_EDIT_BOUND = 0.05
LOSSLESS = 1e-5
IMAGE = Image.new("RGB", (64, 48), (120, 30, 200))


def _edit(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(IMAGE, "make it red", num_inference_steps=4, size_level=64, generator=generator,
                output_type="latent").images


def _dit_inputs(model, seed=0, tokens=64, context=12):
    generator = torch.Generator().manual_seed(seed)
    hidden = model.config.mllm_hidden_size
    return dict(hidden_states=torch.randn(2, tokens, 64, generator=generator),
                timestep=torch.tensor([0.7, 0.7]),
                encoder_hidden_states=torch.randn(2, context, hidden, generator=generator),
                encoder_attention_mask=torch.ones(2, context, dtype=torch.long),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(context, 3))


def _seeded_mid():
    torch.manual_seed(3)
    return build_transformer("mid").eval()


def test_fp8_storage_quarters_the_dit_weights_and_stays_within_its_bound():
    model = _seeded_mid()
    inputs = _dit_inputs(model)
    with torch.no_grad():
        reference = model(**inputs)
    before = memory.parameter_bytes(model)
    saved = memory.enable_fp8_storage(model)
    after = memory.parameter_bytes(model)
    assert saved == before - after
    assert after == memory.fp8_storage_bytes(_seeded_mid())  # what the estimate of the memory modes counts
    assert after < before / 2  # float32 -> float8 except the adaLN modulations, proj_out and the rotary table
    assert memory.uses_fp8_storage(model) and model.dtype == torch.float32  # computed in the compute dtype
    with torch.no_grad():
        assert relative_error(model(**inputs), reference) < FP8_FORWARD_BOUND


def test_a_whole_edit_with_fp8_storage_stays_within_its_bound_and_is_repeatable():
    reference = _edit(tiny_pipeline())
    pipe = tiny_pipeline()
    notes = apply_acceleration(pipe, Acceleration(dit_storage="fp8"), "cpu")
    assert any("fp8" in note for note in notes)
    first, second = _edit(pipe), _edit(pipe)
    assert torch.equal(first, second)
    assert 0 < relative_error(first, reference) < FP8_EDIT_BOUND


def test_the_official_fp8_checkpoint_is_loaded_as_stored_without_up_casting(tmp_path):
    folder = save_tiny_official(tmp_path / "official")
    (dit_file,) = folder.glob("step1x-edit-*.safetensors")
    # Write the DiT file as the official FP8 release is: the layers' weights in float8_e4m3fn.
    state = load_file(dit_file)
    fp8 = {key: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value for key, value in state.items()}
    save_file(fp8, dit_file)

    pipe = load_pipeline(folder, device="cpu", acceleration=Acceleration(dit_storage="fp8"))
    weight = pipe.transformer.transformer_blocks[0].attn.to_out[0].weight
    assert weight.dtype == torch.float8_e4m3fn
    stored = fp8["double_blocks.0.img_attn.proj.weight"]
    assert torch.equal(weight.view(torch.uint8), stored.view(torch.uint8))  # the file's bits, never rounded twice
    assert pipe.transformer.dtype == torch.float32
    assert any("kept in fp8 as the checkpoint stores them" in note for note in pipe.acceleration_notes)
    # The same weights up-cast on load, then stored in fp8 after: the same model.
    upcast = load_pipeline(folder, device="cpu")
    apply_acceleration(upcast, Acceleration(dit_storage="fp8"), "cpu")
    assert torch.equal(_edit(pipe), _edit(upcast))
    # Whatever the memory mode, an fp8 file stays in fp8 unless the DiT's format is chosen otherwise.
    assert memory.uses_fp8_storage(load_pipeline(folder, device="cpu", acceleration=Acceleration()).transformer)
    assert not memory.uses_fp8_storage(load_pipeline(folder, device="cpu", acceleration=Acceleration(
        dit_storage="auto")).transformer)


def _count_onloads(monkeypatch):
    from diffusers.hooks.group_offloading import ModuleGroup

    counts = {"groups": 0}
    original = ModuleGroup.onload_

    def onload(group):
        counts["groups"] += 1
        return original(group)

    monkeypatch.setattr(ModuleGroup, "onload_", onload)
    return counts


def test_group_offloading_streams_the_dit_block_by_block_with_the_same_result(monkeypatch):
    model = _seeded_mid()
    inputs = _dit_inputs(model)
    with torch.no_grad():
        reference = model(**inputs)
    counts = _count_onloads(monkeypatch)
    memory.enable_group_offload(model, torch.device("cpu"), "dit")
    assert memory.is_group_offloaded(model)
    with torch.no_grad():
        result = model(**inputs)
    assert relative_error(result, reference) <= LOSSLESS
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    assert counts["groups"] == blocks + 1  # each block once, and what lies outside the blocks
    assert memory.execution_device(model) == torch.device("cpu")


def test_group_offloading_of_the_mllm_and_the_dit_keeps_a_whole_edit_unchanged(monkeypatch):
    reference = _edit(tiny_pipeline())
    pipe = tiny_pipeline()
    counts = _count_onloads(monkeypatch)
    memory.enable_group_offload(pipe.transformer, torch.device("cpu"), "dit")
    memory.enable_group_offload(pipe.text_encoder, torch.device("cpu"), "mllm")
    assert relative_error(_edit(pipe), reference) <= LOSSLESS
    assert counts["groups"] > 0


@pytest.mark.parametrize("acceleration, flag", [
    (Acceleration(memory="24gb"), "--memory 24gb"),
    (Acceleration(memory="12gb"), "--memory 12gb"),
    (Acceleration(offload="group"), "--offload group"),
    (Acceleration(offload="model"), "--offload model"),
])
def test_a_gpu_memory_mode_on_the_cpu_is_refused_with_one_line(acceleration, flag):
    with pytest.raises(UnsupportedModeError, match=flag) as error:
        check_combination(acceleration, torch.device("cpu"))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("acceleration, field", [
    (Acceleration(memory="8gb"), "memory"), (Acceleration(offload="disk"), "offload"),
    (Acceleration(cache="teacache"), "cache"), (Acceleration(cache_threshold=0.1), "cache_threshold"),
    (Acceleration(cache="first-block", cache_threshold=2.0), "cache_threshold"),
])
def test_a_mode_value_outside_its_choices_names_the_field(acceleration, field):
    with pytest.raises(InvalidValueError, match=field):
        check_combination(acceleration, torch.device("cpu"))


def test_auto_runs_everything_resident_on_the_cpu_and_says_so():
    pipe = tiny_pipeline()
    notes = apply_acceleration(pipe, Acceleration(memory="auto"), "cpu")
    assert notes[0].startswith("memory mode full: running on cpu")


def test_auto_picks_the_fastest_mode_that_fits_the_free_gpu_memory(monkeypatch):
    pipe = tiny_pipeline()
    needs = {mode: memory.estimated_peak_bytes(pipe, mode) for mode in memory.AUTO_ORDER}
    assert needs["full"] > needs["24gb"] and needs["full"] > needs["16gb"]
    gpu = torch.device("cuda", 0)
    for mode in ("full", "24gb"):
        free = int(needs[mode] / memory.AUTO_HEADROOM) + 1
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 80 * 2**30))
        chosen, why = memory.choose_memory_mode(pipe, gpu)
        assert chosen == mode and why.startswith(f"memory mode {mode} (auto)")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1, 80 * 2**30))
    with pytest.raises(UnsupportedModeError, match="not enough GPU memory for this model in any mode"):
        memory.choose_memory_mode(pipe, gpu)


def test_the_24gb_mode_fits_the_released_model_on_a_24_gb_card_by_the_estimate():
    """The estimate, on a meta-device pipeline of the released sizes: full needs more than a 24 GB card, 24gb less."""
    from step1x_edit.testing.random_models import random_pipeline

    pipe = random_pipeline("full", device="meta", torch_dtype=torch.bfloat16)
    gib = 2**30
    full, mode_24, mode_16, mode_12 = (memory.estimated_peak_bytes(pipe, mode) / gib
                                       for mode in ("full", "24gb", "16gb", "12gb"))
    assert full > 40
    assert mode_24 < 22 and mode_16 < 14 and mode_12 < 11
    assert mode_12 < mode_16


def test_vae_tiling_applies_to_an_autoencoder_that_has_it_and_is_refused_where_none_exists():
    pipe = tiny_pipeline()
    assert memory.enable_vae_tiling(pipe.vae) and pipe.vae.use_tiling
    demo = load_pipeline(None, device="cpu")
    with pytest.raises(UnsupportedModeError, match="--vae-tiling"):
        apply_acceleration(demo, Acceleration(vae_tiling=True), "cpu")


def test_a_lora_is_merged_before_the_weights_are_stored_in_fp8():
    from peft import LoraConfig

    pipe = tiny_pipeline()
    torch.manual_seed(0)  # the adapter's random initial weights
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    with_lora = _edit(pipe)
    effect = relative_error(with_lora, _edit(tiny_pipeline()))
    notes = apply_acceleration(pipe, Acceleration(dit_storage="fp8"), "cpu")
    assert any("LoRAs merged" in note for note in notes)
    assert not getattr(pipe.transformer, "peft_config", None)
    assert relative_error(_edit(pipe), with_lora) < effect / 3  # the adapter is kept, rounded to fp8 with the rest


def test_a_quantized_dit_takes_the_place_of_the_memory_modes_fp8_storage():
    from step1x_edit.acceleration.options import loads_dit_in_fp8, resolved_plan

    chosen = Acceleration(memory="24gb", quantize_dit="int8")
    assert resolved_plan(chosen, "24gb").dit_storage == "auto" and not loads_dit_in_fp8(chosen)
    assert resolved_plan(Acceleration(memory="24gb"), "24gb").dit_storage == "fp8"
    with pytest.raises(UnsupportedModeError, match="choose one"):
        check_combination(Acceleration(dit_storage="fp8", quantize_dit="int8"), torch.device("cpu"))
