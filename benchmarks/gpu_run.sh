#!/usr/bin/env bash
# The GPU figures docs/PERFORMANCE.md still lacks ("Large photos": 12 MP JPEGs at 4 and 16 CPUs per GPU, every
# decode mode and precision) in ONE device call, sized for a session's 15 minutes of device time (the machine's
# start counts too). The packages the GPU machine lacks come as Python 3.12 wheels in .whl/, unpacked by
# .whl/install.py: Ray 2.60 and its dependencies, pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection
# annotated-types, simplejpeg==1.9.0 (without it whole JPEGs are decoded by Pillow, about 3x slower):
#
#   python3 .whl/install.py && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && bash benchmarks/gpu_run.sh
#
# Run with the device tool's timeout_s=600. The most wanted figures come first (4 CPUs per GPU); each step has a
# time limit, and what is under $OUT when the call ends comes back, so a slow step costs only itself (its JSON
# holds every figure measured before the limit). Checked end to end on a CPU with --device cpu, small photos and
# fp32 only (7 minutes there, the ResNet-50 steps stopped by their limits).
# Writes under $OUT: versions.txt, nvidia-smi.txt, gpu_util.csv (sampled every 250 ms), photos.txt and
# photos_<cpus>cpu_<arch>.json (benchmarks/throughput.py), test_gpu.txt (tests/pipeline/test_gpu.py).
set -u
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import torch, torchvision, ray; print(torch.__version__, torchvision.__version__, ray.__version__)' \
  | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 250 > "$OUT/gpu_util.csv" 2>&1 &
smi=$!
# 12 MP photo-like JPEGs made once (a process per core) and shared by every run: --image-dir
photos=/tmp/photos-3000x4000
step() {  # step <seconds> <cpus> <arch>
  echo "=== $(date -u +%T) cpus=$2 arch=$3" | tee -a "$OUT/photos.txt"
  timeout "$1" python3 benchmarks/throughput.py --device cuda --cpus "$2" --image-size 3000x4000 --images 192 \
    --batch 16 --arch "$3" --decode full,reduced,gpu --precision fp32,fp16 --skip d --image-dir "$photos" \
    --json "$OUT/photos_${2}cpu_${3}.json" 2>&1 | grep -e '^(' -e Error -e Traceback | tee -a "$OUT/photos.txt"
}
step 150 4 fasterrcnn_mobilenet_v3_large_fpn
step 120 4 fasterrcnn_resnet50_fpn_v2
step 100 16 fasterrcnn_mobilenet_v3_large_fpn
step 100 16 fasterrcnn_resnet50_fpn_v2
echo "=== $(date -u +%T) test_gpu" | tee -a "$OUT/photos.txt"
# pyproject's addopts name pytest-timeout, which the GPU machine lacks
timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/pipeline/test_gpu.py 2>&1 \
  | tail -25 | tee "$OUT/test_gpu.txt"
kill $smi 2>/dev/null
exit 0
