"""Loading a saved MoSELoRA adapter in a process that never imports mosgeo_lora: the wheel
ships ``mosgeo_lora_autoload.pth``, whose start-up import watches for ``import peft``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("setuptools")

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "adapter-0.1.0"

#: a user's script: PEFT and transformers only, as lm-eval's ``peft=`` does it
SCRIPT = f"""
import site, sys
site.addsitedir(sys.argv[1])  # what start-up does with site-packages and its .pth files
assert "mosgeo_lora" not in sys.modules
from peft import PeftModel
from transformers import LlamaForCausalLM
base = LlamaForCausalLM.from_pretrained({str(FIXTURE / "base")!r})
model = PeftModel.from_pretrained(base, {str(FIXTURE / "adapter")!r})
other = LlamaForCausalLM.from_pretrained({str(FIXTURE / "base")!r})
other.load_adapter({str(FIXTURE / "adapter")!r})  # transformers' own route
print("loaded", type(model.base_model).__name__, type(other.model.layers[0].mlp.up_proj).__name__)
"""


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    """The wheel of this checkout, unpacked as a site-packages folder would hold it."""
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*cmd, "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("mosgeo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"mosgeo_lora_autoload.pth", "_mosgeo_lora_autoload.py"} <= names
        assert (
            zf.read("mosgeo_lora_autoload.pth").decode().strip() == "import _mosgeo_lora_autoload"
        )
        site = out / "site"
        zf.extractall(site)
    return site


def _run(site: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(site)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_process_that_never_imports_mosgeo_lora_loads_the_adapter(site_dir):
    done = _run(site_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded MoSELoraModel MoSELoraLinear" in done.stdout


def test_without_the_autoload_peft_does_not_know_the_type(site_dir):
    done = _run(site_dir, MOSGEO_LORA_AUTOLOAD="0")
    assert done.returncode != 0 and "KeyError: 'MOSELORA'" in done.stderr
