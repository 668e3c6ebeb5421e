"""The registry of published weights files: layout, hashes, bands, defaults."""

import re
from urllib.parse import urlsplit

import pytest

from xcloud.errors import UnknownModelError, WeightsError
from xcloud.models import published as pub
from xcloud.models.published import (
    PUBLISHED,
    PublishedFile,
    default_for,
    default_sha256,
    published,
    published_for_model,
)

KAPPAMASK_URL = re.compile(r"http://kappamask\.s3-website\.eu-central-1\.amazonaws\.com/"
                           r"model_weights/2022-09-13/(l1c|l2a)_(unet|deeplabv3plus)\.hdf5")
MODELS = {
    "kappamask-l1c", "kappamask-l2a", "kappamask-l1c-deeplabv3plus",
    "kappamask-l2a-deeplabv3plus", "cloudsen12-l1c", "cloudsen12-l2a", "cloudsen12-rgbn",
    "cloudsen12-landsat", "sensei-v2-segformer-b2-alldata-ambiguous",
    "sensei-v2-segformer-b2-s2-ambiguous", "sensei-v2-deeplabv3-s2-unambiguous",
    "sensei-v2-baseline-segformer-b2-s2-unambiguous",
}


def test_every_model_has_exactly_one_default():
    models = {e.model for e in PUBLISHED.values()}
    assert models == MODELS
    for model in models:
        defaults = [e for e in published_for_model(model) if e.default]
        assert len(defaults) == 1, model
        assert published(model) is defaults[0] is default_for(model)
        assert published_for_model(model)[0].default


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cache_layout_mirrors_the_published_url(name):
    entry = PUBLISHED[name]
    assert entry.files[0].filename.endswith((".hdf5", ".pt"))  # the weights come first
    for file in entry.files:
        assert urlsplit(file.url).path.endswith("/" + file.filename)
        assert file.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", file.sha256)
    assert entry.main in {f.filename for f in entry.files} or all(
        f.filename.startswith(entry.main + "/") or f.filename.startswith("sensei-configs/")
        for f in entry.files)


def test_kappamask_entries():
    entries = {m: published(m) for m in MODELS if m.startswith("kappamask")}
    for model, entry in entries.items():
        (file,) = entry.files
        level, arch = KAPPAMASK_URL.fullmatch(file.url).groups()
        assert model == f"kappamask-{level}" + ("" if arch == "unet" else "-deeplabv3plus")
        assert file.sha256 is None and file.size is None  # nothing published: never invented
    l1c = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
           "B12")
    assert entries["kappamask-l1c"].bands == entries["kappamask-l1c-deeplabv3plus"].bands == l1c
    unet = entries["kappamask-l2a"].bands
    assert unet == ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B08", "B8A", "B09", "B11",
                    "B12", "WVP")
    deeplab = list(unet)
    deeplab.insert(deeplab.index("B06") + 1, "B07")
    assert entries["kappamask-l2a-deeplabv3plus"].bands == tuple(deeplab)


def test_cloudsen12_entries_carry_the_lfs_hashes():
    files = {e.files[0].filename: e for e in PUBLISHED.values() if e.subdir == "cloudsen12"}
    assert set(files) == {"UNetMobV2_V2.pt", "UNetMobV2_V1.pt", "cloudsen12.pt",
                          "cloudsen12-s2-l2a-1.0.0.pt", "dtacs4bands.pt", "landsat30.pt"}
    for entry in files.values():
        (file,) = entry.files
        assert file.url == f"{pub.CLOUDSEN12_HUB}/{file.filename}"
        assert file.sha256 and file.size and entry.licence == "CC-BY-NC-4.0"
    assert default_for("cloudsen12-l1c").files[0].filename == "UNetMobV2_V2.pt"
    assert files["dtacs4bands.pt"].bands == ("B08", "B04", "B03", "B02")
    assert len(files["cloudsen12-s2-l2a-1.0.0.pt"].bands) == 12
    assert "B10" not in files["cloudsen12-s2-l2a-1.0.0.pt"].bands
    assert default_sha256("cloudsen12-rgbn") == files["dtacs4bands.pt"].files[0].sha256
    assert default_sha256("kappamask-l1c") is None


def test_sensei_entries_are_model_folders():
    for model in (m for m in MODELS if m.startswith("sensei-v2")):
        entry = published(model)
        names = [f.filename for f in entry.files]
        assert entry.main.startswith("full-models/") and entry.subdir == "sensei-v2"
        assert names[:2] == [f"{entry.main}/weights.pt", f"{entry.main}/config.yaml"]
        for file in entry.files:
            assert file.url == f"{pub.SENSEI_V2_HUB}/{file.filename}"
        sensei = [n for n in names if n.startswith("sensei-configs/")]
        assert sensei == ([] if "baseline" in model else ["sensei-configs/senseiv2-medium.yaml"])
        assert entry.licence == "GPL-3.0-only"


def test_unknown_name_says_what_exists():
    with pytest.raises(UnknownModelError, match="xcloud weights list") as info:
        published("no-such-weights")
    assert "cloudsen12-l2a" in str(info.value)


@pytest.mark.parametrize("kwargs", [
    {"filename": "../x.pt"}, {"filename": "/abs.pt"}, {"filename": "a//b.pt"},
    {"sha256": "ABC"}, {"url": "file:///etc/passwd"},
])
def test_published_file_rejects_bad_fields(kwargs):
    fields = {"url": "https://example.org/x.pt", "filename": "x.pt", **kwargs}
    with pytest.raises(WeightsError):
        PublishedFile(**fields)


def test_register_refuses_to_replace():
    entry = PUBLISHED["cloudsen12-l2a"]
    twin = type(entry)(**{**entry.__dict__, "notes": "other"})
    with pytest.raises(ValueError, match="overwrite=True"):
        pub.register_published(twin)
    assert pub.register_published(entry) is entry


def test_the_how_to_page_lists_every_file():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "how-to" / "weights.md").read_text()
    for entry in PUBLISHED.values():
        assert f"`{entry.name}`" in page and entry.licence in page
        for file in entry.files:
            row = next(line for line in page.splitlines() if f"]({file.url})" in line)
            assert (f"`{file.sha256}`" if file.sha256 else "unknown") in row
            assert (f"{file.size:,}" if file.size else "unknown") in row
