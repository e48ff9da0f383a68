"""The demo model's DiT (step1x_edit.demo.delta.ReferenceDeltaTransformer2DModel): it predicts the change to the
source latents, hands the sampler a velocity, starts as the identity edit, and saves, checks and loads as its own
class."""

import json

import pytest
import torch

from step1x_edit.checkpoints.inspect import describe_model
from step1x_edit.demo.delta import ReferenceDeltaTransformer2DModel
from step1x_edit.errors import CheckpointError, InvalidValueError
from step1x_edit.models.presets import build_transformer
from step1x_edit.models.transformer import Step1XEditTransformer2DModel
from step1x_edit.pipeline import DEMO_MODEL_DIR, load_pipeline
from step1x_edit.sampling import position_ids

DELTA_CLASS = ["step1x_edit.demo.delta", "ReferenceDeltaTransformer2DModel"]


def _delta_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_transformer("tiny", model_class=ReferenceDeltaTransformer2DModel, **overrides).eval()


def _inputs(model, batch=2, latent_hw=(4, 6), text_length=5):
    generator = torch.Generator().manual_seed(0)
    img_ids, txt_ids = position_ids(*latent_hw, text_length, model.config.version)
    tokens = torch.randn(batch, img_ids.shape[0], model.config.in_channels, generator=generator)
    states = torch.randn(batch, text_length, model.config.mllm_hidden_size, generator=generator)
    mask = torch.ones(batch, text_length, dtype=torch.long)
    return tokens, torch.tensor([0.9, 0.4][:batch]), states, mask, img_ids, txt_ids


def test_a_fresh_reference_delta_model_predicts_the_velocity_back_to_the_reference():
    model = _delta_model()
    assert model.config.prediction_type == "reference_delta"  # the class's own, without being asked for
    tokens, t, states, mask, img_ids, txt_ids = _inputs(model)
    count = tokens.shape[1] // 2
    with torch.no_grad():
        velocity = model(tokens, t, states, mask, img_ids, txt_ids)[:, :count]
    expected = (tokens[:, :count] - tokens[:, count:]) / t[:, None, None]
    assert torch.allclose(velocity, expected, atol=1e-5)  # output layer starts at zero: x0 = reference


def test_a_reference_delta_model_adds_its_output_to_the_reference():
    model = _delta_model()
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    tokens, t, states, mask, img_ids, txt_ids = _inputs(model)
    count = tokens.shape[1] // 2
    with torch.no_grad():
        velocity = model(tokens, t, states, mask, img_ids, txt_ids)
        output = Step1XEditTransformer2DModel.forward(model, tokens, t, states, mask, img_ids, txt_ids)  # raw
    clean = tokens[:, :count] - t[:, None, None] * velocity[:, :count]  # x0 implied by the velocity
    assert output[:, :count].abs().max() > 1e-3
    assert torch.allclose(clean, tokens[:, count:] + output[:, :count], atol=1e-5)
    assert torch.equal(velocity[:, count:], output[:, count:])  # the reference rows are the raw output


def test_a_reference_delta_model_saves_and_loads_as_its_own_class_and_the_released_class_refuses_it(tmp_path):
    model = _delta_model()
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "ReferenceDeltaTransformer2DModel" and config["prediction_type"] == "reference_delta"
    loaded = ReferenceDeltaTransformer2DModel.from_pretrained(tmp_path)
    assert loaded.config.prediction_type == "reference_delta"
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight)  # loading keeps the weights, not the zeros
    with pytest.raises(InvalidValueError, match="ReferenceDeltaTransformer2DModel$"):
        Step1XEditTransformer2DModel.from_pretrained(tmp_path)


def test_reference_delta_needs_its_own_prediction_type_matching_channels_and_an_even_image_sequence():
    with pytest.raises(InvalidValueError, match=r"^ReferenceDeltaTransformer2DModel takes prediction_type "
                       r"'reference_delta' only, got 'velocity'; a velocity model is a "
                       r"step1x_edit\.models\.transformer\.Step1XEditTransformer2DModel$"):
        _delta_model(prediction_type="velocity")
    with pytest.raises(InvalidValueError, match=r"out_channels \(32\) must equal in_channels \(64\)"):
        _delta_model(out_channels=32)
    model = _delta_model()
    tokens, t, states, mask, img_ids, txt_ids = _inputs(model)
    with pytest.raises(ValueError, match="as many reference tokens as noisy ones"):
        model(tokens[:, :-1], t, states, mask, img_ids[:-1], txt_ids)


def test_lora_adapters_on_a_reference_delta_model_train_and_export_to_kohya_names():
    from peft import LoraConfig

    from step1x_edit.checkpoints.lora import default_lora_targets, peft_to_kohya

    model = _delta_model()
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)  # a trained model (LoRA adapts one; the output layer is frozen)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=default_lora_targets(model),
                                 init_lora_weights=False))
    tokens, t, states, mask, img_ids, txt_ids = _inputs(model)
    count = tokens.shape[1] // 2
    model(tokens, t, states, mask, img_ids, txt_ids)[:, :count].square().mean().backward()
    lora = [param for name, param in model.named_parameters() if "lora_" in name]
    assert lora and all(param.grad is not None and param.grad.abs().sum() > 0 for param in lora)
    assert any(key.endswith(".lora_down.weight") for key in peft_to_kohya(model))


def test_a_saved_reference_delta_pipeline_is_checked_and_loaded_as_the_class_its_index_names(tmp_path):
    from step1x_edit.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.register_modules(transformer=_delta_model())
    pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    index_file, config_file = tmp_path / "model" / "model_index.json", tmp_path / "model" / "transformer" / "config.json"
    assert json.loads(index_file.read_text())["transformer"] == DELTA_CLASS
    assert type(load_pipeline(tmp_path / "model", device="cpu").transformer) is ReferenceDeltaTransformer2DModel

    config = json.loads(config_file.read_text())
    del config["prediction_type"]  # a config without the field takes the class's own
    config_file.write_text(json.dumps(config))
    assert describe_model(tmp_path / "model")["components"]["transformer"]["prediction_type"] == "reference_delta"
    config_file.write_text(json.dumps({**config, "prediction_type": "velocity"}))
    with pytest.raises(CheckpointError, match=r"config\.json: ReferenceDeltaTransformer2DModel takes prediction_type "
                       "'reference_delta' only, got 'velocity'"):
        load_pipeline(tmp_path / "model", device="cpu")

    # a folder that names the released class for a reference_delta model says which class it needs
    config_file.write_text(json.dumps({**config, "prediction_type": "reference_delta"}))
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()),
                                      "transformer": ["step1x_edit.models.transformer", "Step1XEditTransformer2DModel"]}))
    with pytest.raises(CheckpointError, match=r"a reference_delta model is a "
                       r"step1x_edit\.demo\.delta\.ReferenceDeltaTransformer2DModel$") as error:
        load_pipeline(tmp_path / "model", device="cpu")
    assert "\n" not in str(error.value)


def test_the_shipped_demo_model_is_a_reference_delta_model():
    assert json.loads((DEMO_MODEL_DIR / "model_index.json").read_text())["transformer"] == DELTA_CLASS
    transformer = load_pipeline(None, device="cpu").transformer
    assert type(transformer) is ReferenceDeltaTransformer2DModel
    assert transformer.config.prediction_type == "reference_delta"
