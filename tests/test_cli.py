from xcloud.cli import main


def test_models_lists_every_model(capsys):
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    assert "ukis-6b-l1c" in out and "s2cloudless" in out and "Apache-2.0" in out


def test_demo_prints_class_fractions(capsys, tmp_path):
    target = tmp_path / "mask.nc"
    assert main(["demo", "--size", "192", "--chunk", "96", "--output", str(target)]) == 0
    out = capsys.readouterr().out
    assert "clear" in out and "Mpx/s" in out and target.exists()


def test_errors_are_one_line(capsys):
    assert main(["demo", "--size", "64", "--model", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xcloud: error: no model named") and "Traceback" not in err
