#!/usr/bin/env bash
# Every check of issue 13 that needs a GPU, as one prepared command for a lent GPU (the
# device tool: nothing can be installed there; its image has torch, transformers and peft,
# this repo runs from source). About 8-9 minutes on an H100, each step under its own
# timeout so that a slow step cannot take the others' results with it. Results go to $OUT
# (the folder the device tool brings back), or benchmarks/results/ when OUT is unset.
#
#   device run: bash benchmarks/gpu_check.sh          (timeout_s 560)
#
# 1. the GPU tests: the compiled kernels (Triton, the default "auto" there: γ, and each adapted
#    layer compiled whole) against the eager code, alone and in a wrapped model;
# 2. the step table in bf16 on SmolLM2-135M's shape (30 layers): tokens/s at 8×64 and 8×512,
#    decoding, op counts, host syncs with torch.cuda.set_sync_debug_mode("warn");
# 3. tokens/s at 8×512 in bf16 on Qwen2-1.5B's shape (28 layers);
# 4. the 2,048-token block table (SmolLM2 and Qwen2-1.5B MLP blocks).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/geometry/test_radial.py tests/tuner/test_ops.py -k gpu \
    2>&1 | tee "$out/gpu_tests.log" | tail -3
timeout 200 python3 benchmarks/bench_step.py --device cuda --dtype bfloat16 --reps 5 \
    --out "$out" 2>&1 | grep -v Warning | tail -8
timeout 100 python3 benchmarks/bench_step.py --device cuda --dtype bfloat16 --shape qwen2-1.5b \
    --train-shapes 8x512 --reps 5 --new-tokens 16 --out "$out" 2>&1 | grep -v Warning | tail -6
timeout 100 python3 benchmarks/bench_layer.py --device cuda --reps 5 --analysis /dev/null \
    --out "$out" 2>&1 | grep -v Warning | tail -6
ls -l "$out"
