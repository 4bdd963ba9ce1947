"""``python -m mosgeo_lora.finetune …`` = ``mosgeo-lora …`` (e.g. under ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
