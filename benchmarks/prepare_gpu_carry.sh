#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on the GPU machine beyond the checkout: wheels for the packages its Python 3.12
# image lacks, in .whl/, and CIFAR-10 (when it sits beside the checkout) in .device_data/. Both folders are
# git-ignored and travel with the call when named in its carry list (benchmarks/README.md: "Running the GPU check").
#
#     bash benchmarks/prepare_gpu_carry.sh                 # run from anywhere; writes into the checkout
#
# The image has torch, transformers (5.17), timm, accelerate, huggingface-hub (1.33), pyarrow (version not on
# record), pandas, requests, httpx, tqdm, xxhash, pyyaml, filelock, packaging, aiohttp and fsspec, but not datasets or
# evaluate. datasets 5.x needs pyarrow >= 24 (with 23 it fails: "Can't pickle <class 'MonthDayNano'>"), so we carry
# datasets 4.8.5: pyarrow >= 21, huggingface-hub < 2 (the image's 1.33). Its Requires-Dist, checked against the
# image's list: dill (< 0.4.2) and multiprocess (< 0.70.20) are missing and carried; fsspec must be <= 2026.2.0 and
# is carried at that version so the image's own cannot fall outside; the rest is there. evaluate needs nothing more.
# `gpu_check.py --device cpu --quick` passed here with these wheels over transformers 5.17.0, huggingface-hub 1.33.0
# and pyarrow 23.0.1 or 26.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=(datasets==4.8.5 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0)

rm -rf .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

# 45,000 training images instead of the shipped sample's 4,500 for the data-path section (about 18 MB).
if [ -d ../shared/datasets/cifar10 ]; then
    rm -rf .device_data/cifar10
    mkdir -p .device_data
    cp -r ../shared/datasets/cifar10 .device_data/cifar10
    chmod -R u+w .device_data/cifar10
fi

ls -l .whl
for wheel in .whl/*.whl; do
    echo "$(basename "$wheel") needs: $(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' \
        | grep -v 'extra ==' | cut -d' ' -f2- | paste -sd ';' -)"
done
du -sh .whl .device_data 2>/dev/null || true
total=$(du -sm .whl $([ -d .device_data ] && echo .device_data) | awk '{sum += $1} END {print sum}')
# The call carries the checkout too (about 10 MB tracked) and has a 64 MiB limit in all.
if [ "$total" -gt 40 ]; then
    echo "carry is ${total} MB: too close to the 64 MiB limit of a call" >&2
    exit 1
fi
echo "carry: ${total} MB in .whl and .device_data"
