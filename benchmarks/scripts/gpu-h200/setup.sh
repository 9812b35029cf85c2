# Sourced by the gpu-h200 scripts once DEVICE, WORK and OUT are set: makes the folders, installs the
# suite into the device machine's own Python (its torch stays), and prints what the run ran on.
mkdir -p "$WORK" "$OUT"
if [ "$DEVICE" != cpu ]; then
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log"; exit 1; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python3 -c "import torch, suite; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'suite', suite.__version__)"
nproc --all
