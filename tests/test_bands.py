import pytest

from xcloud.data.bands import SENTINEL2_BANDS, band, canonical_band_name, match_bands
from xcloud.errors import BandError, MissingBandError


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("B02", "B02"), ("blue", "B02"), ("B2", "B02"), ("b02", "B02"), ("nir08", "B8A"),
     ("rededge4", "B8A"), ("B8A", "B8A"), ("b8a", "B8A"), ("swir16", "B11"), ("cirrus", "B10"),
     ("SCL", "SCL"), ("aot", "AOT"), ("nir", "B08"), ("B8", "B08")],
)
def test_aliases_resolve_to_canonical_names(name, canonical):
    assert canonical_band_name(name) == canonical


def test_unknown_name_is_none_and_band_raises():
    assert canonical_band_name("thermal") is None
    with pytest.raises(BandError, match="unknown band"):
        band("thermal")


def test_wavelengths_increase_with_band_number():
    spectral = [b for b in SENTINEL2_BANDS.values() if b.wavelength_min is not None]
    centres = [b.wavelength_center for b in spectral]
    assert centres == sorted(centres)
    assert all(b.wavelength_min < b.wavelength_max for b in spectral)


def test_match_bands_any_order_ignores_extras():
    found = match_bands(["scl", "nir", "red", "blue", "green", "B05"], ["B02", "B03", "B04", "B08"])
    assert found == ["blue", "green", "red", "nir"]


def test_missing_band_names_it_and_the_full_list():
    with pytest.raises(MissingBandError) as info:
        match_bands(["blue", "green", "red"], ["B02", "B03", "B04", "B08"])
    message = str(info.value)
    assert "B08" in message and "B02, B03, B04, B08" in message


def test_duplicated_band_is_an_error():
    with pytest.raises(BandError, match="twice"):
        match_bands(["blue", "B02", "green"], ["B02", "B03"])
