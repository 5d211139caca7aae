"""hwnas installed from its wheel (not editable) runs its own recipes, spaces and tables outside the checkout."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _venv_with_wheel(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, onnxruntime, ...) from this environment, as a plain path entry: its .pth
    # files, among them the editable install of the checkout, are not processed
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("hwnas-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    return venv


@pytest.mark.slow
def test_the_wheel_runs_its_shipped_recipes_spaces_and_tables_outside_the_checkout(tmp_path):
    venv = _venv_with_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def hwnas(*args: str) -> str:
        done = subprocess.run([str(venv / "bin" / "hwnas"), *args], cwd=elsewhere, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import hwnas; print(hwnas.__file__)"],
                           cwd=elsewhere, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    assert "3,349,342" in hwnas("info", "--arch", "DARTS_V2", "--dataset", "cifar10")
    listed = hwnas("configs", "list").split()
    assert "configs/run/quickstart.yaml" in listed and "configs/spaces/densenas_32_small.yaml" in listed
    predicted = json.loads(hwnas("lut", "predict", "--table", "latency_tables/amd-epyc-2core-ort-1thread/darts_cifar10.csv",
                                 "--arch", "DARTS_V2", "--json"))
    assert predicted["predicted_ms"] > 0
    report = json.loads(hwnas("search", "densenas", "--out", "runs/tiny", "--quiet", "--json", "--set",
                              "search.epochs=1", "--set", "search.arch_start_epoch=0", "--set", "data.train_subset=160",
                              "--set", "search.batch_size=16"))
    assert (elsewhere / "runs" / "tiny" / "arch.json").is_file() and report["arch"]["space"] == "densenas_32_small"
    hwnas("configs", "copy", "configs/run/quickstart.yaml", "mine")
    assert (elsewhere / "mine" / "quickstart.yaml").read_text().startswith("#")


def test_every_package_of_the_checkout_is_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("hwnas", "profilers")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found and found <= listed, sorted(found - listed)
