#!/bin/bash
# device call 2: lee_bp sweep round 2 (lr_theta_ratio 1 = the paper's Adam setting, plus lr/decay/kappa),
# spike_bp_dropout -cpu candidates evaluated at their training T.
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . -e tests/fixtures/snn_suite_example_rule >/dev/null 2>&1 || echo PIP-FAILED
export SNN_SUITE_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
R=/tmp/r2; mkdir -p $R/logs
L="timeout 470 python3 -m suite.cli run --preset lee_bp/mnist-cpu --backend fused --limit-test 2000 --curve 1000 --quiet --epochs 10 --set lr_theta_ratio=1.0"
$L --seeds 1 --out $R/lee_th1_s1 > $R/logs/lee_th1_s1.log 2>&1 &
$L --seeds 0 --set lr=5e-4 --out $R/lee_lr5 > $R/logs/lee_lr5.log 2>&1 &
$L --seeds 0 --set lr_decay_epochs=5 --out $R/lee_d5 > $R/logs/lee_d5.log 2>&1 &
$L --seeds 0 --set lr=5e-4 --set lr_decay_epochs=10 --out $R/lee_lr5d10 > $R/logs/lee_lr5d10.log 2>&1 &
$L --seeds 0 --set kappa_hidden=-0.4 --out $R/lee_k04 > $R/logs/lee_k04.log 2>&1 &
$L --seeds 0 --set kappa_hidden=-0.2 --out $R/lee_k02 > $R/logs/lee_k02.log 2>&1 &
$L --seeds 0 --batch-size 64 --out $R/lee_b64 > $R/logs/lee_b64.log 2>&1 &
$L --seeds 0 --set wreg_lambda=0.01 --out $R/lee_wreg > $R/logs/lee_wreg.log 2>&1 &
$L --seeds 0 --set rho=0.0 --out $R/lee_rho0 > $R/logs/lee_rho0.log 2>&1 &
$L --seeds 0 --set T=100 --epochs 5 --out $R/lee_T100 > $R/logs/lee_T100.log 2>&1 &
S="timeout 480 python3 -m suite.cli run --preset spike_bp_dropout/mnist-cpu --seeds 0 --device cuda --curve 2000 --quiet"
$S --epochs 5 --set T=20 --set 'lr_milestones=(4,)' --timesteps 5,10,20 --out $R/sbd_T20e5 > $R/logs/sbd_T20e5.log 2>&1 &
$S --epochs 5 --set T=30 --set 'lr_milestones=(4,)' --timesteps 10,20,30 --out $R/sbd_T30e5 > $R/logs/sbd_T30e5.log 2>&1 &
$S --epochs 3 --set T=50 --set 'lr_milestones=(2,)' --timesteps 10,25,50 --out $R/sbd_T50e3 > $R/logs/sbd_T50e3.log 2>&1 &
$S --epochs 6 --set T=25 --set 'lr_milestones=(4,)' --timesteps 5,10,25 --out $R/sbd_T25e6 > $R/logs/sbd_T25e6.log 2>&1 &
wait
for f in $R/logs/*.log; do echo "== $f"; grep -v "^\s*$" $f | grep -v "^wrote" | tail -12; done > $OUT/summary.txt
tar czf $OUT/results.tgz -C $R .
cat $OUT/summary.txt
