#!/usr/bin/env bash
# Issue 11's GPU measurements, in parts of at most about 6 minutes each on one H100/H200 (pick them
# with GPU_CHECK_PARTS, default "train"). Run each part as its own device call: "train step" in one
# call needs ~11 minutes, more than one call's 600 s. Send the second call as soon as the first
# returns: a machine stays warm only ~30 s, and a fresh start costs minutes of the session's 15.
#
# train: benchmarks/bench_train_gpu.py, the real `clipa-train pretrain` (loader, syntax sidecars,
# compiled ViT-B/16, batch 1024, 112 and 64 px) against the synthetic compiled step, writing
# benchmarks/results/train_gpu.json. Its data comes packed: run `.venv/bin/python -m
# benchmarks.bench_train_gpu --prepare` on the CPU machine and carry ".bench" (~20 MiB) and ".whl".
#
# step: the probe (bf16 matmul ceiling, SDPA backends on the step's attention shapes), bench_step's four
# cases eager and compiled (with torch.profiler summaries), then the speed-up variants while the
# time budget lasts, each under its own cap so that one slow compile cannot eat the run. Every
# variant writes its raw figures after each case, and the merge writes
# benchmarks/results/step_gpu.json (ratios of the best exact variant, every variant's figures).
#
#   on a CUDA host with Python 3.12 + torch (no index needed):  bash benchmarks/gpu_check.sh
#   PYTHON=<interpreter> (default python3). GPU_CHECK_BUDGET=<s>: seconds for the measurements
#   (default 330: probe, eager, compiled and what fits; ~900 runs every variant). OUT=<dir> gets
#   the merged JSON, the profile summaries, the raw files (step_gpu_raw/) and the log. GPU_CHECK_ARGS:
#   added to every bench_step call (a dry run of this script on a CPU: "--sequential --preset
#   test-tiny --batch 4 --steps 1 --rounds 1 --warmup 2 --dynamo-backend aot_eager").
#
# Wheels in .whl/ (../shared/tools/gpu-wheels.sh) are installed to /tmp/site first when present;
# bench_step itself needs torch, numpy, rich, regex and pyarrow (all on the GPU host).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/benchmarks/results/gpu_check_out}
BUDGET=${GPU_CHECK_BUDGET:-330}
PY=${PYTHON:-python3}
RAW=$OUT/step_gpu_raw # under OUT: a run cut short still returns the variants it finished
PARTS=${GPU_CHECK_PARTS:-train}
[[ " $PARTS " == *" step "* ]] && rm -rf "$RAW" # this run's variants only (OUT may persist)
mkdir -p "$OUT" "$RAW"
touch "$RAW/.started"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "!! wheel install failed"
fi
mkdir -p /tmp/site
ln -sfn "$PWD/cli" /tmp/site/clipa_cli # the package's import name (pyproject maps cli/ to it)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,memory.used \
  --format=csv
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
echo "cores: $(nproc)"
df -h /dev/shm # the loader's batches travel in shared memory (~0.6 GB in flight at 112 px)
# What the measurements import beyond torch: a missing one ends the call in seconds, not minutes
# (bench_step needs numpy, rich, regex and pyarrow; the train part the whole trainer and loader).
needs="numpy, rich, regex, pyarrow"
[[ " $PARTS " == *" train "* ]] && needs="$needs, google.protobuf, fsspec, typer, PIL, yaml, simplejpeg, google_crc32c, ftfy"
"$PY" -c "import $needs" \
  || { echo "!! a package the benchmarks import is missing (above): fill .whl/ with ../shared/tools/gpu-wheels.sh"; exit 3; }

if [[ " $PARTS " == *" train "* ]]; then
  echo "== train: bench_train_gpu (cap ${GPU_CHECK_TRAIN_S:-330} s)"
  rm -rf benchmarks/work/train_gpu_run_* # this run's metrics only
  # --copy-to: the result reaches OUT after each case, so a call cut short returns what finished
  timeout -k 5 "${GPU_CHECK_TRAIN_S:-330}" "$PY" -m benchmarks.bench_train_gpu --copy-to "$OUT" \
    ${GPU_CHECK_TRAIN_ARGS:-} || echo "!! bench_train_gpu exit $?"
  for run in benchmarks/work/train_gpu_run_*; do
    [[ -f $run/metrics.jsonl ]] && cp "$run/metrics.jsonl" "$OUT/$(basename "$run").metrics.jsonl"
  done
fi
if [[ " $PARTS " != *" step "* ]]; then
  echo "== done (parts: $PARTS)"
  exit 0
fi

start=$SECONDS
# bench <cap seconds> <bench_step arguments...>: run one measurement within the remaining budget.
bench() {
  local cap=$1 left=$((BUDGET - (SECONDS - start)))
  shift
  if ((left < 60)); then # a cold ViT-B compile alone takes 42-55 s
    echo "== SKIPPED (budget spent): $*"
    return
  fi
  ((cap > left)) && cap=$left
  echo "== [$((SECONDS - start)) s] cap ${cap} s: bench_step $*"
  timeout -k 5 "$cap" "$PY" -m benchmarks.bench_step --raw-dir "$RAW" --profile-dir "$OUT" "$@" ${GPU_CHECK_ARGS:-} \
    || echo "!! exit $? (cap ${cap} s): $*"
}
# best <label...>: the label whose 224/112 MFU mean is highest in the raw files so far.
best() {
  "$PY" - "$RAW" "$@" <<'PY'
import json, pathlib, sys
raw, scores = pathlib.Path(sys.argv[1]), {}
for label in sys.argv[2:]:
    path = raw / f"step_gpu_{label}.json"
    figures = json.loads(path.read_text())["figures"] if path.exists() else {}
    mfus = [figures[c]["mfu"] or figures[c]["samples_per_s"] for c in ("224px_T77", "112px_T16") if c in figures]
    scores[label] = sum(mfus) / 2 if len(mfus) == 2 else -1
print(max(scores, key=scores.get))
PY
}

MAIN=224px_T77,112px_T16
# Measured on one H200 (2026-12-04): a cold compile takes 42-55 s per case, so the four compiled
# cases need ~230 s; the variants after them run while the budget lasts, most telling first.
bench 40 --probe
bench 70 --variant eager --profile 112px_T16
bench 260 --variant compile --profile 112px_T16,224px_T77
bench 120 --variant compile_pure_bf16 --cases $MAIN --profile 112px_T16
bench 120 --variant compile_cudagraphs --cases $MAIN
base=$(best compile compile_cudagraphs)
base=${base:-compile}
bench 120 --variant "$base" --batch-scale 2 --cases $MAIN
sdpa=$("$PY" -c "import json; print(json.load(open('$RAW/probe.json')).get('suggested_sdpa') or '')" 2>/dev/null)
case "$sdpa" in
  cudnn) bench 60 --variant compile_cudnn_attention --cases $MAIN ;;
  flash) bench 60 --variant compile_flash --cases $MAIN ;;
  efficient) bench 60 --variant compile_efficient_attention --cases $MAIN ;;
  *) echo "== no SDPA backend beats the default by 5 % (probe: '${sdpa}')" ;;
esac
bench 120 --variant compile_blocks --cases $MAIN
bench 150 --variant compile_autotune --cases 112px_T16

echo "== [$((SECONDS - start)) s] merge"
if "$PY" -m benchmarks.bench_step --raw-dir "$RAW" --merge; then
  # A CPU dry run merges into $RAW and leaves the committed GPU results alone: copy only new ones.
  [[ benchmarks/results/step_gpu.json -nt $RAW/.started ]] && cp benchmarks/results/step_gpu.json "$OUT/"
else
  echo "!! merge failed: the variants' raw files are in $RAW"
fi
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
echo "== done in $((SECONDS - start)) s"
