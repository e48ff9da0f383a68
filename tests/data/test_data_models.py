"""Detection, segmentation and inpainting operators with tiny random local models, and the removal stage."""

import numpy as np
import pytest
from PIL import Image

from step1x_edit.data import LocalExecutor, Pipeline, generate_from_photos, summarize, transform_store
from step1x_edit.data.annotate.models import (
    BoxSegmenter,
    DiffusersInpainter,
    ModelRemoval,
    SamSegmenter,
    TransformersDetector,
    removal_stage,
    remove_subject,
)

torch = pytest.importorskip("torch")


def tiny_sam():
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    try:
        from transformers import SamImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import SamImageProcessor as ImageProcessor
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        mlp_dim=64,
        global_attn_indexes=[1],
        window_size=2,
        num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
    )
    torch.manual_seed(0)
    model = SamModel(
        SamConfig(
            vision_config=vision.to_dict(),
            prompt_encoder_config=prompt.to_dict(),
            mask_decoder_config=decoder.to_dict(),
        )
    )
    processor = SamProcessor(ImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    return SamSegmenter(model, processor)


def tiny_inpainter():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.zeros(1, 4, 8)
    return DiffusersInpainter(
        pipe, num_inference_steps=2, prompt_embeds=embeds, negative_prompt_embeds=embeds, guidance_scale=1.0
    )


def tiny_owlvit_pipeline():
    from transformers import CLIPTokenizer, OwlViTConfig, OwlViTForObjectDetection, pipeline

    try:
        from transformers import OwlViTImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import OwlViTImageProcessor as ImageProcessor
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}  # OWL-ViT masks queries whose first id is 0
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = OwlViTConfig(
        text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 16},
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    processor = ImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    return pipeline(
        "zero-shot-object-detection",
        model=OwlViTForObjectDetection(config).eval(),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]),
        image_processor=processor,
    )


class FixedDetections:
    """Stands in for a transformers zero-shot-object-detection pipeline: same call and output format."""

    def __call__(self, image, candidate_labels, threshold):
        return [
            {
                "label": candidate_labels[0],
                "score": 0.4,
                "box": {"xmin": 4, "ymin": 6, "xmax": 20, "ymax": 22},
            },
            {
                "label": candidate_labels[-1],
                "score": 0.9,
                "box": {"xmin": 8, "ymin": 8, "xmax": 24, "ymax": 24},
            },
        ]


def _photo():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB")


def test_sam_segmenter_returns_one_full_size_mask_per_box():
    masks = tiny_sam().segment(Image.new("RGB", (48, 40), (200, 100, 50)), [(4, 4, 30, 30), (10, 10, 20, 20)])
    assert len(masks) == 2 and all(mask.shape == (40, 48) and mask.dtype == bool for mask in masks)


def test_transformers_detector_runs_a_tiny_owlvit_and_clips_boxes():
    image = Image.new("RGB", (64, 48), (200, 10, 10))
    detections = TransformersDetector(tiny_owlvit_pipeline(), threshold=0.0).detect(image, ["cat", "dog"])
    assert detections and {d.label for d in detections} <= {"cat", "dog"}
    assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
    assert all(0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48 for x0, y0, x1, y1 in (d.box for d in detections))


def test_detector_ranks_detections_by_score():
    detections = TransformersDetector(FixedDetections()).detect(_photo(), ["cat", "dog"])
    assert [d.label for d in detections] == ["dog", "cat"] and detections[0].box == (8, 8, 24, 24)


def test_inpainter_regenerates_only_the_masked_region():
    photo = _photo()
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (8, 8, 24, 24))
    result = np.asarray(tiny_inpainter().inpaint(photo, mask))
    keep = np.asarray(mask) == 0
    assert np.array_equal(result[keep], np.asarray(photo)[keep]) and not np.array_equal(
        result[~keep], np.asarray(photo)[~keep]
    )


def test_remove_subject_grows_the_mask_and_reports_the_detection():
    target, mask, detection = remove_subject(
        _photo(), ["dog"], TransformersDetector(FixedDetections()), BoxSegmenter(), tiny_inpainter(), grow=2
    )
    area = np.asarray(mask) > 0
    assert detection.label == "dog" and area[6:26, 6:26].all() and not area[:5].any()
    assert target.size == (32, 32)


def _build_removal():
    generator = {"name": "test-removal", "version": "1", "config_hash": "t"}
    return ModelRemoval(
        TransformersDetector(FixedDetections()), tiny_sam(), tiny_inpainter(), ["bird"], generator
    )


def test_removal_stage_turns_photos_into_masked_removal_triplets(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        _photo().rotate(90 * index).save(photos / f"{index}.png")
    source = generate_from_photos(
        tmp_path / "photos_store",
        photos,
        tasks=("tone_transformation",),
        executor=LocalExecutor(1),
        progress=False,
    )
    stage = removal_stage(
        _build_removal, {"detector": "fixed", "segmenter": "tiny-sam", "inpainter": "tiny-sd"}
    )
    out = transform_store(
        source.root, tmp_path / "removal", Pipeline((stage,)), LocalExecutor(1), progress=False
    )
    assert summarize(out)["per_task"] == {"subject_removal": 2}
    for record in out.iter_records():
        assert record["mask"] is not None and record["instruction_en"] == "Remove the bird."
        assert record["provenance"]["parent_ids"] and record["scores"]["detection"] == pytest.approx(0.9)
