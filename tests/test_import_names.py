"""Our code is importable only as `gpt_oss_triton.*`: no top-level folder of the checkout answers to a bare name
(transformers imports the `kernels` library by that name; our `kernels/` once answered instead)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("kernels", "model", "loader")


def _locations(spec) -> list[Path]:
    places = list(spec.submodule_search_locations or []) + ([spec.origin] if spec.origin else [])
    return [Path(place).resolve() for place in places if place not in ("namespace", "built-in", "frozen")]


def test_the_checkout_root_is_not_on_the_test_path():
    assert all(Path(entry or ".").resolve() != REPO for entry in sys.path), sys.path


@pytest.mark.parametrize("name", OURS)
def test_a_bare_name_does_not_find_our_folder(name):
    spec = importlib.util.find_spec(name)
    if spec is not None:
        assert REPO / name not in _locations(spec), f"import {name} finds {REPO / name}"


def test_transformers_gets_the_kernels_library():
    pytest.importorskip("transformers", reason="needs the transformers package (the test extra)")
    from transformers.utils import is_kernels_available
    if is_kernels_available():  # then transformers imports it; it must be the library, not our folder
        import kernels
        assert hasattr(kernels, "get_kernel"), kernels.__file__


def test_our_kernels_folder_never_shadows_an_installed_kernels_package(tmp_path):
    """Run from the checkout root (the working directory first on sys.path, as `python -c` and a REPL put it), a
    regular `kernels` package anywhere later on the path still wins: our folder is only a portion of
    gpt_oss_triton, not a package of its own."""
    lib = tmp_path / "site" / "kernels"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("WHO = 'the library'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", "import sys, kernels; print(sys.path[0] == '', kernels.WHO)"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "the", "library"], out.stdout


def test_our_kernels_import_under_the_package_name():
    from gpt_oss_triton.kernels import routing
    assert Path(routing.__file__).resolve().parent == REPO / "kernels"
