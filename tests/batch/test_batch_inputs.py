"""What edit-batch refuses before any work: malformed input files and flags, each as one line naming the problem."""

import pytest

from step1x_edit.cli import main


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("pairs.jsonl", '{"image": "a.png", "instruction": "x"}\n{"image": "a.png"\n', "pairs.jsonl:2: not valid JSON"),
        ("pairs.jsonl", '["a.png", "x"]\n', "pairs.jsonl:1: each line must be a JSON object, got a list"),
        ("pairs.jsonl", '{"image": "a.png", "instruction": "x", "guidence": 2}\n', "unknown field(s) ['guidence']"),
        ("pairs.jsonl", '{"image": "a.png"}\n', "pairs.jsonl:1: missing instruction"),
        ("pairs.jsonl", '{"image": 3, "instruction": "x"}\n', "'image' must be a path (text), got the number 3"),
        ("pairs.jsonl", '{"image": "a.png", "instruction": "x", "id": "../up"}\n', "'id' must be 1 to 200"),
        ("pairs.jsonl", '{"image": "a.png", "instruction": "x", "id": "a"}\n' * 2, "sample id 'a' appears twice"),
        ("pairs.jsonl", "\n\n", "holds no samples"),
        ("pairs.csv", "image,prompt\na.png,x\n", "unknown field(s) ['prompt']"),
        ("pairs.csv", "image,instruction\na.png,x,extra\n", "pairs.csv:2: more cells than the header has columns"),
        ("pairs.txt", "a.png make it blue\n", "expected a .jsonl or .csv file"),
    ],
)
def test_a_malformed_input_file_is_a_one_line_error_naming_its_line(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_text(content)
    assert main(["edit-batch", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("step1x-edit edit-batch: error: ") and message in error


def test_a_folder_without_instructions_is_refused(tmp_path, capsys):
    assert main(["edit-batch", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no instructions file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--actors", "2"], "--actors applies to --engine ray only"),
        (["--ray-address", "auto", "--gpus-per-actor", "1"], "--ray-address, --gpus-per-actor applies to --engine ray"),
        (["--engine", "ray", "--parallel", "cfg"], "--parallel applies to step1x-edit edit under torchrun"),
    ],
)
def test_engine_flags_of_the_other_engine_are_refused(tmp_path, capsys, flags, message):
    (tmp_path / "pairs.jsonl").write_text('{"image": "a.png", "instruction": "x"}\n')
    assert main(["edit-batch", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "out"), *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "0"], "--batch-size: must be an integer between 1 and 1024"),
        (["--shard-size", "many"], "--shard-size: must be an integer between 1 and 100000"),
        (["--actors", "-1"], "--actors: must be an integer between 1 and 1024"),
        (["--gpus-per-actor", "nan"], "--gpus-per-actor: must be a finite number"),
        (["--strength", "0"], "--strength: must be a finite number in (0.0, 1.0]"),
        (["--seed", "-3"], "--seed: must be an integer between 0"),
    ],
)
def test_out_of_range_flags_are_refused_by_name(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["edit-batch", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "out"), *flags])
    assert message in capsys.readouterr().err
