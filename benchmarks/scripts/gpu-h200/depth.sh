#!/usr/bin/env bash
# The depth experiment (benchmarks/comparison/depth-*.toml) on a lent GPU machine (the device tool),
# as GPU rows beside the CPU ones. Run from the repo root with Fashion-MNIST and the N-MNIST subset
# copied to .gpu/data (ignored, carried). Six `snn-suite run`s share the GPU, each into its own
# folder (per dataset: surrogate_bptt_bn at alpha = 1, at alpha = 10, and the cnn/ann2snn twins);
# whatever finishes before LIMIT seconds is packed into $OUT/depth-rows.tgz. The device tool carries
# at most 64 MiB, so the N-MNIST subset may travel as .gpu/nmnist.tar.xz, unpacked here.
# RUNS (name matrix rules jobs [archs], one run per line) replaces the six runs, e.g. to finish one
# method; PRELOAD names committed rows folders whose cells are copied into every run's folder first,
# so --resume skips what is already measured (only new cell files need to come back).
# The N-MNIST runs need tonic, which the lent machine (2026-12-04) did not have and could not install
# (no network): they failed there; carry a tonic wheel or run N-MNIST on the CPU.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DEVICE=${DEVICE:-cuda} LIMIT=${LIMIT:-480} WORK=${WORK:-/tmp/gpu-depth}
OUT=${OUT:-$WORK/out}
source "$(dirname "$0")/setup.sh"
if [ -f .gpu/nmnist.tar.xz ] && [ ! -d .gpu/data/nmnist-subset ]; then mkdir -p .gpu/data && tar xJf .gpu/nmnist.tar.xz -C .gpu/data; fi
start=$(date +%s)
# name  matrix  rules  jobs  [archs]
RUNS=${RUNS:-"fashion_mnist-a1 depth-fashion_mnist surrogate_bptt_bn ${JF:-4}
fashion_mnist-a10 depth-fashion_mnist-alpha10 surrogate_bptt_bn ${JF:-4}
fashion_mnist-twins depth-fashion_mnist cnn,ann2snn ${JT:-2}
nmnist-a1 depth-nmnist surrogate_bptt_bn ${JN:-2}
nmnist-a10 depth-nmnist-alpha10 surrogate_bptt_bn ${JN:-2}
nmnist-twins depth-nmnist cnn,ann2snn 1"}
while read -r name matrix rules jobs archs; do
  [ -n "$name" ] || continue
  mkdir -p "$WORK/$name/cells"
  for d in ${PRELOAD:-}; do cp -n "$d"/cells/*.jsonl "$WORK/$name/cells/"; done
  timeout "$LIMIT" python3 -m suite.cli run --matrix "benchmarks/comparison/$matrix.toml" --rules "$rules" ${archs:+--arch "$archs"} \
    --device "$DEVICE" --data-root .gpu/data --out "$WORK/$name" --executor processes --jobs "$jobs" --quiet --resume \
    >"$WORK/$name.log" 2>&1 &
done <<< "$RUNS"
wait
echo "wall $(( $(date +%s) - start )) s"
names=$(awk 'NF {print $1}' <<< "$RUNS")
for n in $names; do echo "== $n: $(ls "$WORK/$n/cells" 2>/dev/null | wc -l) cells"; tail -n 3 "$WORK/$n.log"; done
tar czf "$OUT/depth-rows.tgz" -C "$WORK" --exclude=checkpoints $names $(for n in $names; do echo "$n.log"; done) 2>/dev/null
ls -la "$OUT"
