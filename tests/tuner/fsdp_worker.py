"""Run by tests/tuner/test_clients.py, plainly (one process, the whole batch) or under
``torchrun`` (FSDP2: ``fully_shard`` on every decoder layer and the model, gloo on CPU, each
process its share of the batch): two SGD steps of MoSELoRA on the tiny Llama in a plain
training loop. Rank 0 saves the full adapter weights to ``OUT_DIR/world<N>.pt``.

usage: fsdp_worker.py OUT_DIR
"""

import os
import sys

import torch

torch.set_num_threads(1)

import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import mosgeo_lora  # noqa: E402
from mosgeo_lora.finetune.base_models import tiny_llama, tiny_tokenizer  # noqa: E402

#: a short and a long row in every process's share: the same token multiset in every split
TEXTS = ["Q: 2 + 3? A: 5", "Q: what is 17 plus 25? A: 42"] * 2


def main() -> None:
    out = sys.argv[1]
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    tok = tiny_tokenizer()
    config = mosgeo_lora.MoSELoraConfig(
        r=4, num_experts=4, top_k=2, num_hyperbolic=1, num_spherical=2, aux_loss_coef=1.0,
        init_weights=False,
    )  # fmt: skip
    model = mosgeo_lora.wrap(tiny_llama(len(tok), seed=0, tie_word_embeddings=True), config, seed=1)
    if distributed:
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    rows = [tok(t)["input_ids"] for t in TEXTS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    mine = slice(rank * len(rows) // world, (rank + 1) * len(rows) // world)
    for _ in range(2):
        model(input_ids=ids[mine], attention_mask=mask[mine], labels=labels[mine]).loss.backward()
        opt.step()
        opt.zero_grad()
    weights = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p  # a DTensor shard
            weights[name] = full.detach().clone()
    if rank == 0:
        torch.save(weights, os.path.join(out, f"world{world}.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
