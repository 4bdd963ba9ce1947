"""Run by tests/finetune/test_train.py under ``torchrun`` (or plainly, as the 1-process reference).

usage: ddp_worker.py OUT_DIR DATA_JSONL BATCH GRAD_ACCUM

Fine-tunes the tiny Llama with MoSELoRA (aux coefficient 1, so a double-counted balance loss
would move the weights visibly) and saves every process's adapter weights to
``OUT_DIR/rank<R>.pt``.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from mosgeo_lora.finetune.config import FinetuneConfig  # noqa: E402
from mosgeo_lora.finetune.train import finetune  # noqa: E402


def main() -> None:
    out, data, batch, accum = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cfg = FinetuneConfig(
        model="tiny-llama",
        data=data,
        method="moselora",
        steps=3,
        batch_size=batch,
        grad_accum=accum,
        lr=1e-2,
        curvature_lr=5e-2,
        aux_loss_coef=1.0,
        max_length=128,
        eval_sets=("none",),
        output_dir=out,
        save_steps=100,
        logging_steps=1,
        disable_tqdm=True,
    )
    captured = {}

    from transformers import TrainerCallback

    class Grab(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured.update(
                {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            )

    finetune(cfg, callbacks=[Grab()])
    rank = int(os.environ.get("RANK", 0))
    torch.save(captured, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
