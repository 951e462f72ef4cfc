#!/usr/bin/env bash
# The prepared GPU check of issue 30: every CUDA path of the library in one run (about 7 minutes
# on an H100), or its CPU smoke version where there is no CUDA (a few minutes on 2 cores).
#
#   OUT=DIR bash benchmarks/gpu_check.sh                  # all steps (OUT defaults to ./gpu-out)
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh          # CPU smoke mode even with a GPU
#   GPU_CHECK_STEPS="2 4" bash benchmarks/gpu_check.sh    # only these steps (0 runs when a step needs it)
#
# Steps (ids as in the summary table; 1b runs last so that the timings run on a quiet machine):
#   0   prep        synthetic videos (tokenflow make-data) and a random CLIP folder with ViT-B/32's
#                   shapes (benchmarks/gpu_clip.py); tiny ones in CPU mode
#   1a  cuda-tests  the CUDA tests (pytest -k cuda; they skip without a GPU), junit XML
#   2   train       bf16 training steps per method at batch 128, 12 frames (benchmarks/gpu_train.py)
#   3   torchrun    NCCL process group, the gathered-negatives path (benchmarks/gpu_ddp.py): the DDP objective
#                   against the single-process one at ViT-B/32 size, then a whole run (tiny backbone)
#   4   bench       benchmarks/pairwise.py for every plan, fp32 and bf16, l1 12 and 50, 1000 x 1000,
#                   GEMM reference in the same run; peak memory vs N up to 16000 (benchmarks/memory.py)
#   5   evaluate    tokenflow evaluate on a 1000 x 1000 synthetic MSR-VTT split, timed
#   6   search      tokenflow search and serve on a 100K-item store, GPU against CPU (benchmarks/gpu_search.py)
#   1b  fast-tests  the suite without the slow tests (pytest -m "not slow"; a few files in CPU mode)
#
# Each step has its own time cap (timeout), all of them together GPU_CHECK_BUDGET seconds (default
# 420 with CUDA, 300 without; a step left with under 15 s is NOT RUN); a failing step does not stop
# the others. Results: $OUT/summary.md
# (table of steps and every step's tables), summary.json, gpu_check.log (this output), the junit
# XML files, and results.tar.gz (every step's JSON, Markdown and log): at most 8 files, as the
# device tool brings back. Scratch: GPU_CHECK_WORK (default /tmp/gpu-check-gpu or -cpu; data and
# the CLIP folder found there are reused). PYTHON: the
# interpreter (default .venv/bin/python if present, else python3). PYTHONPATH is extended with
# src/, and the tests' subprocesses extend it in turn (wheels carried to /tmp/site on the device).
# Exit status 0 when every step passed (or was not selected), else 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/benchmarks/gpu_check.sh"
cd "$ROOT" || exit 2
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
if [[ -z "${GPU_CHECK_MODE:-}" ]]; then  # decided once; the steps inherit it
    if [[ "${GPU_CHECK_CPU:-0}" == 1 ]] || ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
            2> /dev/null; then
        export GPU_CHECK_MODE=cpu
    else
        export GPU_CHECK_MODE=gpu
    fi
fi
MODE=$GPU_CHECK_MODE
export OUT="${OUT:-$ROOT/gpu-out}"
export WORK="${GPU_CHECK_WORK:-/tmp/gpu-check-$MODE}"
export RES="$WORK/results"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export CLIP="$WORK/clip" CLIP_TINY="$WORK/clip-tiny" DTRAIN="$WORK/data-train/videos" DEVAL="$WORK/data-eval/videos"
QUIET=(env TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1)

# -- the steps (each runs in its own bash under `timeout`, with the variables above) ----------------
step_0() {  # prep
    local size=b32 train=128,16,0 test=0,0,1000 px=64 rc=0
    [[ $MODE == cpu ]] && size=tiny train=16,4,0 test=0,0,8 px=32
    mkdir -p "$WORK"
    # each is reused when its last file is there (the image processor, the split file)
    { [[ -f "$CLIP/preprocessor_config.json" ]] || "${QUIET[@]}" "$PYTHON" benchmarks/gpu_clip.py "$CLIP" --size $size
    } && { [[ -f "$CLIP_TINY/preprocessor_config.json" ]] ||
           "${QUIET[@]}" "$PYTHON" benchmarks/gpu_clip.py "$CLIP_TINY" --size tiny; } &
    local p1=$!
    [[ -f "$DTRAIN/MSRVTT_data.json" ]] || "$PYTHON" -m tokenflow.cli make-data "$WORK/data-train" --images 0,0,0 \
        --videos $train --size $px --frames 16 &
    local p2=$!
    [[ -f "$DEVAL/MSRVTT_data.json" ]] || "$PYTHON" -m tokenflow.cli make-data "$WORK/data-eval" --images 0,0,0 \
        --videos $test --size $px --frames 16 &
    local p3=$!
    for p in $p1 $p2 $p3; do wait "$p" || rc=1; done
    local n
    n=$(find "$DEVAL/MSRVTT_Videos" -name '*.mp4' 2>/dev/null | wc -l)
    echo "SUMMARY prep: CLIP $size folder $(du -sh "$CLIP" 2>/dev/null | cut -f1), $(find "$DTRAIN/MSRVTT_Videos" \
        -name '*.mp4' 2>/dev/null | wc -l) training and $n test videos"
    return $rc
}

step_1a() {  # the CUDA tests
    local xml="$RES/1a-cuda-tests.xml" rc
    "$PYTHON" -m pytest -q -p no:cacheprovider -rs -k cuda --ignore=tests/test_gpu_check.py --junitxml="$xml" tests
    rc=$?
    cp "$xml" "$OUT/" 2>/dev/null
    "$PYTHON" benchmarks/gpu_report.py tests "$xml"
    return $rc
}

step_1b() {  # the suite's fast tests
    local xml="$RES/1b-fast-tests.xml" rc paths extra=()
    read -r -a paths <<< "${GPU_CHECK_TESTS:-}"
    if [[ ${#paths[@]} -eq 0 ]]; then
        if [[ $MODE == gpu ]]; then paths=(tests); else paths=(tests/align/test_plans.py); fi
    fi
    if [[ $MODE == gpu ]] && "$PYTHON" -c "import xdist" 2>/dev/null; then
        extra=(-n "${GPU_CHECK_XDIST:-8}")
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
    fi
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" -k "not cuda" --ignore=tests/test_gpu_check.py \
        ${extra[@]+"${extra[@]}"} --junitxml="$xml" "${paths[@]}"
    rc=$?
    cp "$xml" "$OUT/" 2>/dev/null
    "$PYTHON" benchmarks/gpu_report.py tests "$xml"
    return $rc
}

step_2() {  # bf16 training at ViT-B/32 size
    local args=()
    [[ $MODE == cpu ]] && args=(--device cpu --steps 2 --warmup 1 --batch 8 --frames 4 --workers 0)
    "${QUIET[@]}" "$PYTHON" benchmarks/gpu_train.py --clip "$CLIP" --data "$DTRAIN" --work "$WORK/train" \
        --json "$RES/2-train.json" --markdown "$RES/2-train.md" ${args[@]+"${args[@]}"}
}

step_3() {  # torchrun, NCCL, gathered negatives
    local args=()
    [[ $MODE == cpu ]] && args=(--device cpu --batch 8)
    "${QUIET[@]}" "$PYTHON" -m torch.distributed.run --nproc_per_node=1 --master_port=0 --rdzv-backend=c10d \
        --rdzv-endpoint=localhost:0 benchmarks/gpu_ddp.py --clip "$CLIP" --run-clip "$CLIP_TINY" --data "$DTRAIN" \
        --work "$WORK/ddp" --json "$RES/3-torchrun.json" ${args[@]+"${args[@]}"}
}

step_4() {  # the benchmark table and memory against N
    local dev=cuda rc=0 fast=(uniform learnable scan max-avg max-sum tokenflow) slow sizes=()
    local mem=(--l1 50 --n 1000 4000 16000)
    read -r -a slow <<< "$("$PYTHON" -c "from tokenflow.align import list_aligners as a; from tokenflow.bench import \
FAST_PLANS as f; print(' '.join(x for x in a() if x not in f))")"
    if [[ $MODE == cpu ]]; then
        dev=cpu
        sizes=(--n 40 --m 40 --l1 4 8 --l2 8 --dim 32 --memory-n 40 80)
        mem=(--l1 4 --l2 8 --dim 32 --m 40 --slow-m 4 --n 40 80 160)
    fi
    "$PYTHON" benchmarks/pairwise.py --device $dev --aligners "${fast[@]}" --repeats 3 ${sizes[@]+"${sizes[@]}"} \
        --json "$RES/4-bench-fast.json" --markdown "$RES/4-bench-fast.md" || rc=1
    "$PYTHON" benchmarks/pairwise.py --device $dev --aligners "${slow[@]}" --slow-m 10 --repeats 1 --memory-n 1000 \
        ${sizes[@]+"${sizes[@]}"} --json "$RES/4-bench-slow.json" --markdown "$RES/4-bench-slow.md" || rc=1
    "$PYTHON" benchmarks/memory.py --device $dev --aligners "${fast[@]}" sinkhorn "${mem[@]}" \
        --json "$RES/4-memory.json" --markdown "$RES/4-memory.md" || rc=1
    "$PYTHON" benchmarks/gpu_report.py bench "$RES/4-bench-fast.json" "$RES/4-bench-slow.json" \
        --memory "$RES/4-memory.json"
    return $rc
}

step_5() {  # evaluate on a 1000 x 1000 split
    local dev=cuda frames=12 workers=8 batch=256 t0 rc ms
    [[ $MODE == cpu ]] && dev=cpu frames=4 workers=0 batch=4
    t0=$(date +%s%N)
    "${QUIET[@]}" "$PYTHON" -m tokenflow.cli evaluate --dataset msrvtt --root "$DEVAL" --model "$CLIP" \
        --aligner tokenflow --device $dev --frames $frames --video-tokens patches --batch-size $batch \
        --workers $workers --out "$RES/5-evaluate.json" --quiet
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    [[ $rc -eq 0 ]] && "$PYTHON" benchmarks/gpu_report.py evaluate "$RES/5-evaluate.json" --wall-ms $ms
    return $rc
}

step_6() {  # search and serve, GPU against CPU
    local args=()
    [[ $MODE == cpu ]] && args=(--items 3000 --queries 5 --shortlists 20 200 --devices cpu cpu)
    "${QUIET[@]}" "$PYTHON" benchmarks/gpu_search.py --clip "$CLIP" --work "$WORK/search" \
        --json "$RES/6-search.json" --markdown "$RES/6-search.md" ${args[@]+"${args[@]}"}
}

# -- one step, as called by run_step ----------------------------------------------------------------
if [[ "${1:-}" == __step ]]; then
    "step_$2"
    exit $?
fi

# -- the driver -------------------------------------------------------------------------------------
declare -A CAP=([0]=60 [1a]=60 [2]=150 [3]=75 [4]=100 [5]=60 [6]=100 [1b]=240)
declare -A NAME=([0]=prep [1a]=cuda-tests [2]=train [3]=torchrun [4]=bench [5]=evaluate [6]=search-serve
                 [1b]=fast-tests)
ORDER=(0 1a 2 3 4 5 6 1b)
NEEDS_PREP=" 2 3 5 6 "

selected() {
    [[ -z "${GPU_CHECK_STEPS:-}" ]] && return 0
    [[ " $GPU_CHECK_STEPS " == *" $1 "* ]] && return 0
    [[ $1 == 0 ]] && for s in $GPU_CHECK_STEPS; do [[ $NEEDS_PREP == *" $s "* ]] && return 0; done
    return 1
}

record() {  # id status seconds summary
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "${NAME[$1]}" "$2" "$3" "$4" >> "$RES/steps.tsv"
    "$PYTHON" benchmarks/gpu_report.py summary "$RES/steps.tsv" --results "$RES" --out "$OUT" --mode "$MODE" \
        > /dev/null 2>&1
    tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" results 2>/dev/null && mv "$OUT/results.tar.gz.tmp" \
        "$OUT/results.tar.gz"
}

run_step() {
    local id=$1 log="$RES/$1-${NAME[$1]}.log" left cap t0 rc status line
    if ! selected "$id"; then record "$id" "skipped: not selected" 0 ""; return; fi
    left=$((DEADLINE - $(date +%s)))
    cap=${CAP[$id]}
    ((cap > left)) && cap=$left
    if ((cap < 15)); then
        record "$id" "NOT RUN: out of time" 0 "the budget of ${BUDGET}s was spent"
        echo "=== step $id (${NAME[$id]}): not run, out of time"
        return
    fi
    echo "=== step $id (${NAME[$id]}), at most ${cap}s"
    t0=$(date +%s)
    timeout -k 10 "$cap" bash "$SELF" __step "$id" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=passed ;;
        124|137) status="TIMEOUT after ${cap}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    line=$(grep -a '^SUMMARY ' "$log" | tail -1 | sed 's/^SUMMARY [^:]*: //' | tr '\t|' '  ')
    [[ -z $line ]] && line=$(grep -av '^\s*$' "$log" | tail -1 | cut -c1-200 | tr '\t|' '  ')
    record "$id" "$status" $(($(date +%s) - t0)) "$line"
    echo "=== step $id (${NAME[$id]}): $status in $(($(date +%s) - t0))s: $line"
}

main() {
    echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -n), python $PYTHON, mode $MODE, budget ${BUDGET}s"
    echo "gpu_check: OUT=$OUT WORK=$WORK steps=${GPU_CHECK_STEPS:-all}"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', \
torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PYTHON" -c "import tokenflow, ot, pydantic; print('tokenflow', tokenflow.__version__, 'from', \
tokenflow.__file__, '| POT', ot.__version__, '| pydantic', pydantic.__version__)" || echo "gpu_check: an import failed"
    for id in "${ORDER[@]}"; do run_step "$id"; done
    echo
    echo "gpu_check: done in $(($(date +%s) - START))s ($MODE mode); results in $OUT"
    "$PYTHON" benchmarks/gpu_report.py summary "$RES/steps.tsv" --results "$RES" --out "$OUT" --mode "$MODE"
    ! cut -f3 "$RES/steps.tsv" | grep -qE '^(FAILED|TIMEOUT|NOT RUN)'
}

BUDGET="${GPU_CHECK_BUDGET:-$([[ $MODE == gpu ]] && echo 420 || echo 300)}"
START=$(date +%s)
DEADLINE=$((START + BUDGET - 10))
rm -rf "$RES"
mkdir -p "$OUT" "$RES"
rm -f "$OUT/summary.md" "$OUT/summary.json" "$OUT/results.tar.gz" "$OUT"/*-tests.xml
main 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
