#!/usr/bin/env bash
# The GPU measurements issue 31 still awaits, in device calls of at most 10 minutes each.
#
#   On the device machine (from the repository root, after the device bundle's setup):
#     bash benchmarks/gpu_session.sh                      # levers, scoring, main job: about 6 min
#     STAGES=table1 bash benchmarks/gpu_session.sh        # a second call: Table 1 (7 min cap)
#   Rehearsal on a CPU (tiny settings, same stages and files):
#     QUICK=1 STAGES="levers scoring mainjob table1" bash benchmarks/gpu_session.sh
#
# Stages, each under its own time limit so that one slow stage cannot eat the others' time:
#   levers   benchmarks/gpu_levers.py: each training and inference lever alone, GPU utilisation
#   scoring  benchmarks/batched_scoring.py: batched against per-episode scoring, per method
#   mainjob  the README's main job from an empty cache (simulation included; COS-Net added on a GPU)
#   table1   Table 1's 12 paper-profile models at 1,500 episodes, if the shared templates are here
#            (TEMPLATES=folder; default ../shared/data/templates); --archive, so a later call resumes
# Writes $OUT/gpu-session/ (logs, pages, result stores, leaderboards, Table 1's archive, summary.txt)
# and $OUT/gpu-session.tgz; simulated data and checkpoints stay in $WORK (large; remade from seeds).
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
QUICK=${QUICK:-0}
STAGES=" ${STAGES:-levers scoring mainjob} "
TEMPLATES=${TEMPLATES:-../shared/data/templates}
WORK=${WORK:-$(mktemp -d)}
RESULTS="$OUT/gpu-session"
mkdir -p "$RESULTS"
export FSC_CACHE_DIR="$WORK/cache"  # an empty cache: the main job's time includes its simulation

if [ "$QUICK" = 1 ]; then
    DEVICE=cpu
    LEVERS=(--device cpu --profile cpu --quick --seconds 1)
    SCORING=(--episodes 20 --skip-paper)
    MAIN=(--methods protonet,xcorr --ways 2 --episodes 20 --budget 6ep --per-class 12 --snr 1000)
    TABLE=(--budget 4ep --episodes 10 --ways 2 --param cosnet.profile=cpu)
    LIMIT_TABLE=300
else
    DEVICE=cuda
    LEVERS=(--device cuda)
    SCORING=(--device cuda --episodes 200)
    MAIN=()
    TABLE=(--budget 1500ep --param cosnet.profile=paper --workers 4)
    LIMIT_TABLE=420
fi

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to NAME.log, record rc and time
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ "$STAGES" == *" $name "* ]] || return 0
    timeout "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    local status=$?
    printf '%-8s exit %-3s %4s s\n' "$name" "$status" "$((SECONDS - start))" | tee -a "$RESULTS/summary.txt"
}

{ nvidia-smi || echo "no nvidia-smi"; python -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } \
    >"$RESULTS/machine.txt" 2>&1
stage levers 120 python benchmarks/gpu_levers.py "${LEVERS[@]}" --out "$RESULTS/gpu_levers.md"
stage scoring 60 python benchmarks/batched_scoring.py "${SCORING[@]}" --out "$RESULTS/batched_scoring.md"
stage mainjob 180 bash -c 'fsc bench --seeds 0,1,2 --device "$0" --store "$1/main.sqlite" "${@:3}" &&
    fsc leaderboard --store "$1/main.sqlite" --out "$2/main-leaderboard"' "$DEVICE" "$WORK" "$RESULTS" "${MAIN[@]}"
if [ -d "$TEMPLATES" ] || [[ "$STAGES" != *" table1 "* ]]; then
    stage table1 "$LIMIT_TABLE" bash -c 'fsc simulate --templates "$0" --snr inf --snr 1000 --snr 0.5 \
            --out "$1/paper-data" $([ "$3" = 1 ] && echo --per-class 6) &&
        fsc bench --dataset "$1/paper-data" --methods cosnet/scnn,cosnet/scnn-decoder,cosnet/duse,cosnet/duse-decoder \
            --store "$1/paper.sqlite" --device "$4" --resume --archive "$2/paper-results" "${@:5}" &&
        fsc leaderboard --store "$1/paper.sqlite" --out "$2/paper-leaderboard"' \
        "$TEMPLATES" "$WORK" "$RESULTS" "$QUICK" "$DEVICE" "${TABLE[@]}"
else
    echo "table1   skipped: no templates at $TEMPLATES (set TEMPLATES)" | tee -a "$RESULTS/summary.txt"
fi

cp "$WORK"/*.sqlite "$RESULTS"/ 2>/dev/null  # the stores: every episode's row
tar czf "$OUT/gpu-session.tgz" -C "$OUT" gpu-session
echo "== summary"; cat "$RESULTS/summary.txt"
for page in "$RESULTS"/gpu_levers.md "$RESULTS"/batched_scoring.md; do [ -f "$page" ] && tail -n 20 "$page"; done
grep -h "results in\|trained\|failed" "$RESULTS"/mainjob.log "$RESULTS"/table1.log 2>/dev/null | tail -n 20
