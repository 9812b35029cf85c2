#!/bin/bash
# device call 3: lee_bp -cpu preset candidates (lr_theta_ratio 1 = paper's Adam setting), 2 seeds, 8 epochs, full test set
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . -e tests/fixtures/snn_suite_example_rule >/dev/null 2>&1 || echo PIP-FAILED
export SNN_SUITE_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
R=/tmp/r3; mkdir -p $R/logs
L="timeout 450 python3 -m suite.cli run --preset lee_bp/mnist-cpu --backend fused --curve 1000 --quiet --epochs 8 --set lr_theta_ratio=1.0 --set lr_decay_epochs=5"
for s in 0 1; do
$L --seeds $s --out $R/A_s$s > $R/logs/A_s$s.log 2>&1 &
$L --seeds $s --set lr=2e-3 --out $R/B_s$s > $R/logs/B_s$s.log 2>&1 &
$L --seeds $s --batch-size 16 --out $R/C_s$s > $R/logs/C_s$s.log 2>&1 &
$L --seeds $s --set lr=5e-4 --set lr_decay_epochs=10 --out $R/D_s$s > $R/logs/D_s$s.log 2>&1 &
done
wait
for f in $R/logs/*.log; do echo "== $f"; grep -v "^\s*$" $f | grep -v "^wrote" | tail -4; done > $OUT/summary.txt
cat $OUT/summary.txt
