#!/usr/bin/env bash
# The GPU checks of grunet, in one run on a machine with a CUDA device: install, the GPU tests, then the
# benchmark tables (torch.nn.GRU's cuDNN, grunet auto, the Triton kernel, the reference loop) written to
# $OUT (default benchmarks/gpu-results) for benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu.sh            # about 5-10 minutes on an H100/H200-class GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-results}"
mkdir -p "$OUT"
pip install -q -e '.[test,gpu]' 2>&1 | tail -1 || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee "$OUT/machine.txt"

echo "== GPU tests (parity of cuDNN dispatch, its flat weights and the Triton kernel with the reference, on the device)"
python -m pytest -q tests/test_kernels_gpu.py tests/test_flat_weights.py tests/test_kernels_triton.py 2>&1 | tee "$OUT/tests.txt" | tail -5

echo "== tutorial step, inference and the sweep: torch (cuDNN), reference, auto, triton"
timeout 1200 grunet bench --device cuda --repeats 15 --max-call-seconds 5 --results "$OUT/bench.md" 2>&1 \
    | tee "$OUT/bench.txt" | tail -40

echo "== cells cuDNN cannot run: the Triton kernel against the reference loop (goal: at least 20x)"
timeout 900 python - <<'PY' 2>&1 | tee "$OUT/cells.md"
import torch
import grunet
from grunet import bench

bench.set_device("cuda")
B, T, I, H = 50, 28, 28, 75
g = torch.Generator().manual_seed(0)
x = bench.on_device(torch.rand(B, T, I, generator=g))
y = bench.on_device(torch.randint(0, 10, (B,), generator=g))
cases = {
    "reset-before": dict(reset_after=False),
    "reset-before, hard_sigmoid_keras2": dict(reset_after=False, recurrent_activation="hard_sigmoid_keras2"),
    "layer_norm": dict(layer_norm=True),
    "recurrent_dropout=0.25": dict(recurrent_dropout=0.25),
    "zoneout=0.1": dict(zoneout=0.1),
}
print("| cell (training step B=50 T=28 I=28 H=75, Adam fused, cuda) | triton ms | reference ms | speed-up |")
print("|---|---|---|---|")
for name, options in cases.items():
    ms = {}
    for impl in ("triton", "reference"):
        torch.manual_seed(0)
        gru = grunet.GRU(I, H, batch_first=True, impl=impl, **options).to(bench._device).train()
        ms[impl] = bench.median_ms(bench.classifier_step(gru, x, y, "fused"), 15, number=10, warmup=5)
    print(f"| {name} | {ms['triton']:.3f} | {ms['reference']:.3f} | {ms['reference'] / ms['triton']:.1f}x |")
PY
echo "results in $OUT"
