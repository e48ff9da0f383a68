"""The project's models reproduce the official Step1X-Edit code on the shared reference fixtures."""

import os

import pytest

from step1x_edit.testing.parity import FIXTURE_TOLERANCES, check_fixture


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_official_fixture_is_reproduced_within_tolerance(shared_dir, version):
    errors = check_fixture(os.path.join(shared_dir, "fixtures", "step1x_official", version))
    assert errors.keys() == FIXTURE_TOLERANCES.keys()
    failed = {key: value for key, value in errors.items() if not value <= FIXTURE_TOLERANCES[key]}
    assert not failed, f"outside tolerance: {failed}"


def test_directory_without_fixture_files_is_rejected(tmp_path):
    from step1x_edit.errors import DataFormatError

    with pytest.raises(DataFormatError, match="not a parity fixture directory"):
        check_fixture(tmp_path)
