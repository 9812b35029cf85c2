#!/usr/bin/env bash
# The conv-net cells of the tuned MNIST and Fashion-MNIST comparison matrices on a lent GPU machine
# (the device tool), as GPU rows beside the CPU ones. Run from the repo root with the datasets copied
# to .gpu/data (ignored, carried). Each dataset's matrix runs in its own `snn-suite run` with
# --jobs processes sharing the GPU; whatever finishes before LIMIT seconds is packed into $OUT.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DEVICE=${DEVICE:-cuda} JOBS=${JOBS:-6} LIMIT=${LIMIT:-420} WORK=${WORK:-/tmp/gpu-comparison}
RULES=${RULES:+--rules $RULES}
OUT=${OUT:-$WORK/out}
source "$(dirname "$0")/setup.sh"
start=$(date +%s)
for ds in mnist fashion_mnist; do
  timeout "$LIMIT" python3 -m suite.cli run --matrix "benchmarks/comparison/$ds-tuned.toml" --arch convnet $RULES \
    --device "$DEVICE" --data-root .gpu/data --out "$WORK/$ds" --executor processes --jobs "$JOBS" --quiet --resume \
    >"$WORK/$ds.log" 2>&1 &
done
wait
echo "wall $(( $(date +%s) - start )) s"
for ds in mnist fashion_mnist; do
  echo "== $ds: $(ls "$WORK/$ds/cells" 2>/dev/null | wc -l) cells"; tail -n 5 "$WORK/$ds.log"
done
tar czf "$OUT/gpu-rows.tgz" -C "$WORK" --exclude=checkpoints mnist fashion_mnist mnist.log fashion_mnist.log 2>/dev/null
ls -la "$OUT"
