"""`step1x-edit merge`: two fine-tuned models of one lineage averaged weight by weight."""

import pytest
import torch
from PIL import Image

from step1x_edit.cli import main
from step1x_edit.pipeline import load_pipeline
from step1x_edit.testing.tiny import tiny_pipeline

NAME = "transformer_blocks.0.attn.to_q.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny model and a 'fine-tuned' copy of it (its DiT moved), both saved."""
    root = tmp_path_factory.mktemp("merge")
    base, tuned = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    with torch.no_grad():
        for parameter in tuned.transformer.parameters():
            parameter.add_(torch.randn_like(parameter))
    base.save_pretrained(root / "base")
    tuned.save_pretrained(root / "tuned")
    return root / "tuned", root / "base"


def test_merge_writes_the_weighted_average_of_the_two_dits(tmp_path, models):
    tuned, base = models
    out = tmp_path / "merged"
    assert main(["merge", str(tuned), str(base), "--weight", "0.3", "-o", str(out)]) == 0
    merged, a, b = (load_pipeline(path, device="cpu").transformer.state_dict()[NAME] for path in (out, tuned, base))
    torch.testing.assert_close(merged, 0.7 * a + 0.3 * b)
    assert not torch.equal(merged, a) and not torch.equal(merged, b)
    pipe = load_pipeline(out, device="cpu")  # a complete pipeline that edits
    edited = pipe(image=Image.new("RGB", (40, 32), (200, 30, 30)), prompt="make it blue", num_inference_steps=1,
                  size_level=32).images[0]
    assert edited.size == (40, 32)


def test_merge_refuses_models_with_different_autoencoders_and_bad_weights(tmp_path, models, capsys):
    tuned, base = models
    other = tiny_pipeline(seed=1)  # another lineage: another autoencoder
    other.save_pretrained(tmp_path / "other")
    assert main(["merge", str(tuned), str(tmp_path / "other"), "--weight", "0.5", "-o", str(tmp_path / "a")]) == 2
    assert "autoencoders differ" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["merge", str(tuned), str(base), "--weight", "1", "-o", str(tmp_path / "b")]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    for weight in ("0", "1.5", "nan"):
        with pytest.raises(SystemExit) as stop:
            main(["merge", str(tuned), str(base), "--weight", weight, "-o", str(tmp_path / "b")])
        assert stop.value.code == 2
        assert "argument --weight: must be a finite number in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["merge", str(tuned), str(base), "--weight", "0.5", "-o", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
