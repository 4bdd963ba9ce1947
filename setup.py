"""Everything is in pyproject.toml but one build step: put ``mosgeo_lora_autoload.pth`` at the
root of the wheel, so that it lands in site-packages and registers MoSELoRA with PEFT in
every process (``_mosgeo_lora_autoload.py`` says how)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "mosgeo_lora_autoload.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also copies the ``.pth`` file into the build tree's root."""

    def run(self) -> None:
        super().run()
        self.copy_file(PTH, os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": BuildPyWithPth})
