"""Run by tests/tuner/test_clients.py, plainly or under ``torchrun``: one short HF ``Trainer``
run of MoSELoRA on the tiny Llama with *default* ``TrainingArguments`` (DDP with
``find_unused_parameters=True`` under torchrun), data in a fixed order. Saves the adapter's
trainable weights of every process to ``OUT_DIR/rank<R>.pt``.

usage: trainer_worker.py OUT_DIR BATCH
"""

import os
import sys

import torch

torch.set_num_threads(1)

from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.finetune.base_models import tiny_llama, tiny_tokenizer  # noqa: E402


def examples(tok) -> list[dict]:
    """A short and a long row, alternating: every batch of 2 (and of 4) holds the same
    multiset of tokens and pads the short row, so the per-batch Switch loss, which is not
    additive over tokens, is the same in every split of the step."""
    rows = []
    for text in ("Q: 2 + 3? A: 5", "Q: what is 17 plus 25? A: 42"):
        ids = tok(text)["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    return rows * 4


def main() -> None:
    out, batch = sys.argv[1], int(sys.argv[2])
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=0, tie_word_embeddings=True)
    config = mosgeo_lora.MoSELoraConfig(
        r=4, num_experts=4, top_k=2, num_hyperbolic=1, num_spherical=2, aux_loss_coef=1.0,
        init_weights=False,
    )  # fmt: skip
    model = mosgeo_lora.wrap(model, config, seed=1)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        max_steps=2,
        learning_rate=1e-2,
        train_sampling_strategy="sequential",  # the same global batches in every layout
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=examples(tok), data_collator=collator)
    trainer.train()
    rank = int(os.environ.get("RANK", 0))
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(weights, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
