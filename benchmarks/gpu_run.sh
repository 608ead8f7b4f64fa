#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md in one device run (Ray, pydantic and the other packages the GPU machine
# lacks brought over as wheels in .whl/, unpacked by .whl/install.py):
#
#   python3 .whl/install.py && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && bash benchmarks/gpu_run.sh
#
# Writes under $OUT: nvidia-smi.txt, throughput.{txt,json}, test_gpu.txt, gpu_util.csv (sampled every 250 ms).
set -u
OUT=${OUT:-/tmp/gpu-run}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import torch, torchvision, ray; print(torch.__version__, torchvision.__version__, ray.__version__)' \
  | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -lms 250 > "$OUT/gpu_util.csv" 2>&1 &
smi=$!
date -u +%FT%T | tee "$OUT/throughput.txt"
timeout 400 python3 benchmarks/throughput.py --device cuda --images 4000 --batch 16 \
  --json "$OUT/throughput.json" 2>&1 | grep -v -e WARNING -e Warning | tee -a "$OUT/throughput.txt"
date -u +%FT%T | tee -a "$OUT/throughput.txt"
# Few CPUs per GPU and 12 MP photos: every decode mode and precision, at 4 and at 16 CPUs
for cpus in 4 16; do
  for arch in fasterrcnn_mobilenet_v3_large_fpn fasterrcnn_resnet50_fpn_v2; do
    timeout 300 python3 benchmarks/throughput.py --device cuda --cpus $cpus --image-size 3000x4000 --images 384 \
      --batch 16 --arch $arch --decode full,reduced,gpu --precision fp32,fp16 --skip c \
      --json "$OUT/photos_${cpus}cpu_${arch}.json" 2>&1 | grep -v -e WARNING -e Warning \
      | tee -a "$OUT/photos.txt"
  done
done
# pyproject's addopts name pytest-timeout, which the GPU machine lacks
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/pipeline/test_gpu.py 2>&1 \
  | tail -25 | tee "$OUT/test_gpu.txt"
kill $smi 2>/dev/null
exit 0
