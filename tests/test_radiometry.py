"""Radiometry rule: scale/offset from raster:bands, the processing baseline, provider flags."""

from __future__ import annotations

import json

import pytest

from tests.conftest import need_data
from xcloud.data.items import band_assets, harmonize_item
from xcloud.data.radiometry import (
    asset_radiometry,
    baseline_offset,
    parse_baseline,
    processing_baseline,
)
from xcloud.errors import RadiometryError


def real_items(relative: str) -> list[dict]:
    document = json.loads(need_data(relative).read_text())
    features = document if isinstance(document, list) else document.get("features", [document])
    return [f for f in features if f.get("assets")]  # some cassettes hold fields-only items


@pytest.mark.parametrize(("text", "expected"), [
    ("04.00", (4, 0)), ("N0400", (4, 0)), ("05.10", (5, 10)), ("2.12", (2, 12)),
    (4.0, (4, 0)), ("baseline?", None),
])
def test_parse_baseline(text, expected):
    assert parse_baseline(text) == expected


def test_baseline_offset_starts_at_04_00():
    assert baseline_offset((3, 1)) == 0.0
    assert baseline_offset((2, 14)) == 0.0
    assert baseline_offset((4, 0)) == pytest.approx(-0.1)
    assert baseline_offset((5, 11)) == pytest.approx(-0.1)


def test_baseline_from_product_name_when_no_property():
    props = {"s2:product_uri": "S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126"}
    assert processing_baseline(props) == (4, 0)
    assert processing_baseline({}) is None


# (file, expected reflectance offset of B04) on real provider JSON
CASES = [
    ("stac/earth_search/earth-search__sentinel-2-l2a__itemcollection.json", 0.0),  # applied
    ("stac/earth_search/earth-search__sentinel-2-c1-l2a__itemcollection.json", -0.1),
    ("stac/earth_search/earth-search__sentinel-2-l1c__itemcollection.json", -0.1),
    ("stac/planetary_computer/pc_2019_from_pystac_client_cassette.json", 0.0),
    ("stac/planetary_computer/pc_2022_pb0400_item.json", -0.1),
    ("stac/planetary_computer/pc_2024_pb0510_4items.json", -0.1),
    ("stac/odc_stac/S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531_raster_ext.json",
     0.0),
    ("stac/stactools_sentinel2/S2A_OPER_MSI_L1C_TL_SGS__20181231T203637_A018414_T10SDG.json",
     0.0),
    ("stac/stactools_sentinel2/"
     "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE.json", 0.0),
    ("stac/stactools_sentinel2/S2A_OPER_MSI_L2A_TL_VGS1_20220401T110010_A035382_T34LBP.json",
     -0.1),
    ("stac/stactools_sentinel2/"
     "S2A_MSIL2A_20230625T234621_N0509_R073_T01WCP_20230626T022157.SAFE.json", -0.1),
    ("stac/stactools_sentinel2/S2A_T60CWS_20240109T203651_L2A.json", -0.1),
    ("stac/stactools_sentinel2/"
     "esa_S2B_MSIL2A_20210122T133229_N0214_R081_T22HBD_20210122T155500.SAFE.json", 0.0),
]


@pytest.mark.parametrize(("relative", "offset"), CASES, ids=[c[0].split("/")[-1][:40]
                                                              for c in CASES])
def test_real_items_radiometry(relative, offset):
    import pystac

    for document in real_items(relative):
        item = harmonize_item(pystac.Item.from_dict(document), ["B04", "B11"])
        for name in ("B04", "B11"):
            radiometry = asset_radiometry(item.properties, item.assets[name].to_dict(), name,
                                          item_id=item.id)
            assert radiometry.scale == pytest.approx(1e-4)
            assert radiometry.offset == pytest.approx(offset), (item.id, radiometry)


def test_offset_follows_baseline_not_date():
    """A 2019 acquisition reprocessed at baseline 05.00 (collection 1) carries the offset."""
    document = real_items("stac/planetary_computer/pc_2019_from_pystac_client_cassette.json")[0]
    properties = {**document["properties"], "s2:processing_baseline": "05.00"}
    radiometry = asset_radiometry(properties, document["assets"]["B04"], "B04")
    assert radiometry.offset == pytest.approx(-0.1)


def test_auxiliary_layers_and_classes():
    document = real_items("stac/planetary_computer/pc_2022_pb0400_item.json")[0]
    props, assets = document["properties"], document["assets"]
    aot = asset_radiometry(props, assets["AOT"], "AOT")
    assert (aot.scale, aot.offset) == (0.001, 0.0)  # the offset is for reflectance only
    assert asset_radiometry(props, assets["SCL"], "SCL").is_class_layer


def test_unknown_baseline_is_an_error_with_a_way_out():
    document = real_items("stac/odc_stac/S2A_28QCH_20200714_0_L2A.json")[0]
    properties = dict(document["properties"])
    # this old Earth Search item tells its baseline only through the product id (N0214)
    assert asset_radiometry(properties, document["assets"]["B04"], "B04").offset == 0.0
    del properties["sentinel:product_id"]
    with pytest.raises(RadiometryError, match="assume_baseline"):
        asset_radiometry(properties, document["assets"]["B04"], "B04", item_id=document["id"])
    radiometry = asset_radiometry(properties, document["assets"]["B04"], "B04",
                                  assume_baseline="04.00")
    assert radiometry.offset == pytest.approx(-0.1)


def test_band_assets_harmonise_provider_names():
    import pystac

    earth_search = pystac.Item.from_dict(real_items(
        "stac/earth_search/earth-search__sentinel-2-l2a__itemcollection.json")[1])
    names = band_assets(earth_search)
    assert names["B8A"] == "nir08" and names["B11"] == "swir16"
    assert names["SCL"] == "scl" and names["AOT"] == "aot" and names["B02"] == "blue"
    assert "visual" not in names.values()
    l1c = pystac.Item.from_dict(real_items(
        "stac/earth_search/earth-search__sentinel-2-l1c__itemcollection.json")[0])
    assert band_assets(l1c)["B10"] == "cirrus"
    planetary = pystac.Item.from_dict(real_items(
        "stac/planetary_computer/pc_2022_pb0400_item.json")[0])
    assert band_assets(planetary)["B8A"] == "B8A" and band_assets(planetary)["SCL"] == "SCL"
