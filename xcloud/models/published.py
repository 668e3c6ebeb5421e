"""The registry of the weights the authors of KappaMask, SEnSeI-v2 and CloudSEN12 published.

One :class:`PublishedWeights` per published artifact (in the manner of torchgeo's
``WeightsEnum``): where each of its files lives, its sha256 and size where the authors'
hosting tells them (the Git LFS pointers of the Hugging Face repositories carry both), the
licence, the band order the network expects, the citation and the page to read about it.
A SEnSeI-v2 model is several files (``full-models/<name>/config.yaml``, ``weights.pt`` and the
``sensei-configs/<v>.yaml`` the config names); the others are one file each.

Hashes that no public record gives are ``None``, never guessed: the first download records the
file's sha256 in the cache (trust on first use) and every later use is checked against that
record (:mod:`xcloud.models.fetch`). :func:`default_sha256` gives the published hash of a
model's default file, the value :class:`~xcloud.models.registry.ModelEntry` ``sha256`` takes.

>>> from xcloud.models.published import published
>>> published("cloudsen12-l2a").files[0].filename
'cloudsen12-s2-l2a-1.0.0.pt'
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import UnknownModelError, WeightsError

__all__ = [
    "CLOUDSEN12_HUB",
    "KAPPAMASK_HOST",
    "PUBLISHED",
    "SENSEI_V2_HUB",
    "PublishedFile",
    "PublishedWeights",
    "default_for",
    "default_sha256",
    "list_published",
    "published",
    "published_for_model",
    "register_published",
    "unregister_published",
]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

KAPPAMASK_HOST = "http://kappamask.s3-website.eu-central-1.amazonaws.com/model_weights/2022-09-13"
SENSEI_V2_HUB = "https://huggingface.co/aliFrancis/SEnSeIv2/resolve/main"
CLOUDSEN12_HUB = "https://huggingface.co/isp-uv-es/cloudsen12_models/resolve/main"


@dataclass(frozen=True)
class PublishedFile:
    """One published file.

    Parameters
    ----------
    url
        Where the authors publish it (``http(s)://host/path``).
    filename
        Its path inside the artifact's cache folder, ``/``-separated, as the authors lay it out
        (``full-models/<name>/weights.pt`` for SEnSeI-v2, the bare file name otherwise).
    sha256
        64 lowercase hex digits, or ``None`` where no public record gives it.
    size
        Its size in bytes, or ``None`` where unknown.
    """

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.sha256 is not None and not _SHA256_HEX.fullmatch(self.sha256):
            raise WeightsError(f"{self.filename}: sha256 must be 64 lowercase hex digits, got "
                               f"{self.sha256!r}")
        parts = self.filename.split("/")
        if not self.filename or self.filename.startswith("/") or ".." in parts or "" in parts:
            raise WeightsError(f"filename {self.filename!r} must be a relative path without '..'")
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise WeightsError(f"{self.filename}: url {self.url!r} is not http(s)")


@dataclass(frozen=True)
class PublishedWeights:
    """A published weights artifact: the files one model needs, and what to know about them.

    Parameters
    ----------
    name
        The artifact's name (``xcloud weights fetch NAME``).
    model
        The xcloud model these weights are for (``xcloud.models.get(model)``).
    files
        Its files; the first is the weights file.
    licence
        The licence the authors give the weights (SPDX where there is one).
    bands
        The network's input channels in order (empty where the model takes any bands).
    citation
        The paper to cite.
    source_page
        The page that documents the files.
    format
        How the weights are stored (``keras-hdf5-weights``, ``torch-state-dict``,
        ``torchscript``, ``senseiv2-full-model``).
    subdir
        The artifact's folder inside the weights cache.
    main
        What :func:`~xcloud.models.fetch.fetch_weights` returns, relative to ``subdir``: the
        weights file, or the model's folder for multi-file artifacts.
    default
        Whether it is the file ``model`` uses when no ``weights=`` is given.
    notes
        Anything else a user should know (band notes, which file name the authors' code uses).
    """

    name: str
    model: str
    files: tuple[PublishedFile, ...]
    licence: str
    bands: tuple[str, ...]
    citation: str
    source_page: str
    format: str
    subdir: str
    main: str
    default: bool = False
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.files:
            raise WeightsError(f"published weights {self.name!r} list no files")
        names = [f.filename for f in self.files]
        if len(set(names)) != len(names):
            raise WeightsError(f"published weights {self.name!r} list a file twice")

    @property
    def size(self) -> int | None:
        """Total size in bytes, or ``None`` if any file's size is unknown."""
        sizes = [f.size for f in self.files if f.size is not None]
        return None if len(sizes) < len(self.files) else sum(sizes)

    @property
    def hashes_known(self) -> int:
        """How many of its files have a published sha256."""
        return sum(f.sha256 is not None for f in self.files)


# -- the entries ------------------------------------------------------------------------------

_L1C_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
           "B12")
_L2A_UNET = ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B08", "B8A", "B09", "B11", "B12",
             "WVP")
_L2A_DEEPLAB = ("AOT", "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                "B11", "B12", "WVP")
_L2A_12 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

_KAPPAMASK_CITATION = (
    "Domnich, M., Sünter, I., Trofimov, H., et al. (2021). KappaMask: AI-Based Cloudmask "
    "Processor for Sentinel-2. Remote Sensing 13(20), 4100. doi:10.3390/rs13204100")
_KAPPAMASK_LICENCE = "unstated (code: Apache-2.0)"
_SENSEI_CITATION = (
    "Francis, A. (2024). Sensor Independent Cloud and Shadow Masking With Partial Labels and "
    "Multimodal Inputs. IEEE Transactions on Geoscience and Remote Sensing 62. "
    "doi:10.1109/TGRS.2024.3391406")
_CLOUDSEN12_CITATION = (
    "Aybar, C., Ysuhuaylas, L., Loja, J., et al. (2022). CloudSEN12, a global dataset for "
    "semantic understanding of cloud and cloud shadow in Sentinel-2. Scientific Data 9, 782. "
    "doi:10.1038/s41597-022-01878-2; Aybar, C., et al. (2024). CloudSEN12+. Data in Brief 56, "
    "110852. doi:10.1016/j.dib.2024.110852")


def _kappamask(level: str, arch: str, bands: tuple[str, ...], *, model: str) -> PublishedWeights:
    filename = f"{level}_{arch}.hdf5"
    return PublishedWeights(
        name=model, model=model,
        files=(PublishedFile(f"{KAPPAMASK_HOST}/{filename}", filename),),
        licence=_KAPPAMASK_LICENCE, bands=bands, citation=_KAPPAMASK_CITATION,
        source_page="https://github.com/kappazeta/km_predict", format="keras-hdf5-weights",
        subdir="kappamask/2022-09-13", main=filename, default=True,
        notes=f"Keras 2 HDF5 weights file that km_predict v2.4 downloads ({level.upper()}, "
              f"{'U-Net' if arch == 'unet' else 'DeepLabv3+'}); no checksum is published.")


_SENSEI_MEDIUM = PublishedFile(f"{SENSEI_V2_HUB}/sensei-configs/senseiv2-medium.yaml",
                               "sensei-configs/senseiv2-medium.yaml", None, 725)


def _sensei(author_name: str, model: str, *, sensei_config: PublishedFile | None,
            notes: str, default: bool = True, config_size: int | None = None,
            bands: tuple[str, ...] = ()) -> PublishedWeights:
    folder = f"full-models/{author_name}"
    files = [PublishedFile(f"{SENSEI_V2_HUB}/{folder}/weights.pt", f"{folder}/weights.pt"),
             PublishedFile(f"{SENSEI_V2_HUB}/{folder}/config.yaml", f"{folder}/config.yaml",
                           None, config_size)]
    if sensei_config is not None:
        files.append(sensei_config)
    return PublishedWeights(
        name=model, model=model, files=tuple(files), licence="GPL-3.0-only", bands=bands,
        citation=_SENSEI_CITATION, source_page="https://huggingface.co/aliFrancis/SEnSeIv2",
        format="senseiv2-full-model", subdir="sensei-v2", main=folder, default=default,
        notes=notes)


def _cloudsen12(name: str, model: str, filename: str, sha256: str, size: int,
                bands: tuple[str, ...], fmt: str, *, default: bool,
                notes: str) -> PublishedWeights:
    return PublishedWeights(
        name=name, model=model,
        files=(PublishedFile(f"{CLOUDSEN12_HUB}/{filename}", filename, sha256, size),),
        licence="CC-BY-NC-4.0", bands=bands, citation=_CLOUDSEN12_CITATION,
        source_page="https://huggingface.co/isp-uv-es/cloudsen12_models", format=fmt,
        subdir="cloudsen12", main=filename, default=default, notes=notes)


_SENSOR_INDEPENDENT = ("sensor independent: any bands, each described by its wavelengths "
                       "(band descriptors)")

_BUILTIN: tuple[PublishedWeights, ...] = (
    _kappamask("l1c", "unet", _L1C_13, model="kappamask-l1c"),
    _kappamask("l2a", "unet", _L2A_UNET, model="kappamask-l2a"),
    _kappamask("l1c", "deeplabv3plus", _L1C_13, model="kappamask-l1c-deeplabv3plus"),
    _kappamask("l2a", "deeplabv3plus", _L2A_DEEPLAB, model="kappamask-l2a-deeplabv3plus"),
    _sensei("SEnSeIv2-SegFormerB2-alldata-ambiguous", "sensei-v2-segformer-b2-alldata-ambiguous",
            sensei_config=_SENSEI_MEDIUM,
            notes=f"SEnSeIv2 + SegFormer-B2 (SEGFORMER_CONFIG nvidia/mit-b2, 7 classes), trained "
                  f"on all data sets; the authors' default model. {_SENSOR_INDEPENDENT}."),
    _sensei("SEnSeIv2-SegFormerB2-S2-ambiguous", "sensei-v2-segformer-b2-s2-ambiguous",
            sensei_config=_SENSEI_MEDIUM,
            notes=f"SEnSeIv2 + SegFormer-B2, trained on Sentinel-2 data. {_SENSOR_INDEPENDENT}."),
    _sensei("SEnSeIv2-DeepLabv3-S2-unambiguous", "sensei-v2-deeplabv3-s2-unambiguous",
            sensei_config=_SENSEI_MEDIUM, config_size=808,
            notes=f"SEnSeIv2 (senseiv2-medium) + smp DeepLabV3+ (resnet50 encoder, 4 classes), "
                  f"trained on Sentinel-2 data. {_SENSOR_INDEPENDENT}."),
    _sensei("SegFormerB2-S2-unambiguous", "sensei-v2-baseline-segformer-b2-s2-unambiguous",
            sensei_config=None,
            notes="A plain SegFormer-B2 without SEnSeIv2 (the comparison model), 13 "
                  "Sentinel-2 input channels (order: the authors' Sentinel-2 loader), 4 classes."),
    _cloudsen12("cloudsen12-l1c-unetmobv2-v2", "cloudsen12-l1c", "UNetMobV2_V2.pt",
                "218fa69aa3c7212d4e690b48af88ac6f3c976fc50d07f275b8fd623909183d7a", 26796072,
                _L1C_13, "torch-state-dict", default=True,
                notes="UNetMobV2_V2: U-Net/MobileNetV2 trained on CloudSEN12+ (state dict)."),
    _cloudsen12("cloudsen12-l1c-unetmobv2-v1", "cloudsen12-l1c", "UNetMobV2_V1.pt",
                "bcb6db6a592143b43363ba655f46924487a9d5488b49913126424beffeed8d1a", 26794501,
                _L1C_13, "torch-state-dict", default=False,
                notes="UNetMobV2_V1: the model whose masks ship with CloudSEN12+ (state dict)."),
    _cloudsen12("cloudsen12-l1c-2022", "cloudsen12-l1c", "cloudsen12.pt",
                "0bc75f66c7bacab864dcc23ba8e5eb7def2468f4094374ff4497ff97a5461fb4", 79983009,
                _L1C_13, "torch-state-dict", default=False,
                notes="'cloudsen12': the model trained on CloudSEN12 (2022); a checkpoint whose "
                      "'state_dict' entry holds the weights."),
    _cloudsen12("cloudsen12-l2a", "cloudsen12-l2a", "cloudsen12-s2-l2a-1.0.0.pt",
                "3bd7e691020d6231309bc17665fedfebffcf08cb1fb4906c3ac905f080be2aee", 36019691,
                _L2A_12, "torchscript", default=True,
                notes="TorchScript archive of the L2A model. The hub file is "
                      "cloudsen12-s2-l2a-1.0.0.pt (what cloudsen12_models 1.0.2 downloads); the "
                      "GitHub code names it cloudsen12l2a.pt, which the hub does not list: a "
                      "local copy under either name can be passed as weights=PATH."),
    _cloudsen12("cloudsen12-rgbn", "cloudsen12-rgbn", "dtacs4bands.pt",
                "37205adce72fbbb65a3cfa8f47676c84ebf9b1555a27a3838d584072c954b22d", 41267324,
                ("B08", "B04", "B03", "B02"), "torchscript", default=True,
                notes="'dtacs4bands': TorchScript archive, L1C NIR, red, green, blue."),
    _cloudsen12("cloudsen12-landsat", "cloudsen12-landsat", "landsat30.pt",
                "473ad34007c4ae13cc04a5e71313f86bc5562148f6038407250541f44bdf7ba6", 27147825,
                ("B01", "B02", "B03", "B04", "B08", "B10", "B11", "B12"), "torchscript",
                default=True,
                notes="'landsat30': TorchScript archive on the bands Sentinel-2 L1C shares with "
                      "Landsat 8/9 (Sentinel-2 names)."),
)

PUBLISHED: dict[str, PublishedWeights] = {entry.name: entry for entry in _BUILTIN}
_LOCK = threading.Lock()


def register_published(entry: PublishedWeights, *, overwrite: bool = False) -> PublishedWeights:
    """Add ``entry`` (e.g. a mirror's own files, or a test's); refuses to replace a name."""
    with _LOCK:
        if entry.name in PUBLISHED and not overwrite and PUBLISHED[entry.name] is not entry:
            raise ValueError(f"published weights named {entry.name!r} already exist; pass "
                             "overwrite=True to replace them")
        PUBLISHED[entry.name] = entry
    return entry


def unregister_published(name: str) -> PublishedWeights | None:
    """Remove the entry ``name``; the removed entry or ``None``."""
    with _LOCK:
        return PUBLISHED.pop(name, None)


def list_published() -> list[str]:
    """Names of all published artifacts, sorted."""
    return sorted(PUBLISHED)


def published_for_model(model: str) -> list[PublishedWeights]:
    """The artifacts published for the xcloud model ``model``, its default first."""
    entries = [e for e in PUBLISHED.values() if e.model == model]
    return sorted(entries, key=lambda e: (not e.default, e.name))


def default_for(model: str) -> PublishedWeights | None:
    """The artifact ``model`` uses when no ``weights=`` is given, or ``None``."""
    return next((e for e in published_for_model(model) if e.default), None)


def default_sha256(model: str) -> str | None:
    """The published sha256 of ``model``'s default weights file, or ``None``."""
    entry = default_for(model)
    return entry.files[0].sha256 if entry is not None else None


def published(name_or_model: str) -> PublishedWeights:
    """The artifact named ``name_or_model``, or the default artifact of that model."""
    entry = PUBLISHED.get(name_or_model) or default_for(name_or_model)
    if entry is None:
        raise UnknownModelError(
            f"no published weights named {name_or_model!r} and no model of that name with "
            f"published weights; known: {', '.join(list_published())}. Run `xcloud weights "
            "list` to see them.")
    return entry
