#!/usr/bin/env bash
# One GPU session's worth of checks in a single call (device time is scarce and
# every machine start costs minutes), built from run.sh's modes:
#
#   1. run.sh --tests-only   every GPU test (the A/B kernels' tests in their
#                            own processes);
#   2. run.sh --ab           every attention kernel alone, then GPT-2 end to
#                            end per variant (LLMT_AB_VARIANTS), default engine
#                            twice;
#   3. run.sh --bench-only   GPT-2 124M and Llama ~350M vs PyTorch with the
#                            winners combined: per group (forward attention,
#                            backward attention, GEMM autotuning, classifier
#                            chunks or overlap (one group: they exclude each
#                            other), bias-gradient source, weight-gradient
#                            stream) the variant that
#                            beat the mean of the default engine's runs by
#                            >= LLMT_WIN_MIN (default 1.005x) in step 2 --
#                            wgmma, cuDNN, bias-gradient, autotuning,
#                            stream and overlap variants only if their tests
#                            passed
#                            in step 1 (none: the default engine);
#   4. run.sh --profile      GPU time per op group with the same settings.
#
#   bench/gpu/session.sh            (OUT=dir for the device tool's files)
#
# Whole script stays under LLMT_SESSION_S (default 560 s). $OUT gets four
# files: session.txt (every summary table), tests.log, ab-attention.txt (with
# LLMT_AB_KERNELS=1) and logs.tar.gz (every log).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1

TOTAL=${LLMT_SESSION_S:-560}
MIN_GAIN=${LLMT_WIN_MIN:-1.005}
S=$(mktemp -d "${TMPDIR:-/tmp}/llmt-session.XXXXXX")
# run.sh copies its own files into $OUT when set: here only finish() does.
SESSION_OUT=${OUT:-}
unset OUT
START=$SECONDS
left() { echo $((TOTAL - (SECONDS - START))); }
note() { printf '\n##### %s (t=%ds)\n' "$*" "$((SECONDS - START))" | tee -a "$S/session.txt"; }

finish() {
  local o=$SESSION_OUT
  if [[ -n "$o" && -d "$o" ]]; then
    cp "$S/session.txt" "$o/"
    [[ -f "$S/tests/tests.log" ]] && cp "$S/tests/tests.log" "$o/"
    [[ -f "$S/ab/ab-attention.txt" ]] && cp "$S/ab/ab-attention.txt" "$o/"
    tar -czf "$o/logs.tar.gz" -C "$S" . 2>/dev/null
  fi
}
trap finish EXIT

# ---- 1. tests -----------------------------------------------------------------
note "1. GPU tests"
LLMT_BENCH_LOGS=$S/tests LLMT_BENCH_BUDGET_S=200 timeout -k 5 210 \
  bash bench/gpu/run.sh --tests-only >"$S/tests.out" 2>&1
echo "run.sh --tests-only exit $?" >>"$S/session.txt"
sed -n '/^test binary/,/^$/p' "$S/tests.out" >>"$S/session.txt"

test_passed() { grep -qE "^$1 +PASS" "$S/tests.out"; }
# gate VAR WHAT RUN...: VAR=1 when every run in the test table passed, and a
# line "WHAT tests passed: VAR" in session.txt.
gate() {
  local var=$1 what=$2 ok=1 r
  shift 2
  for r in "$@"; do test_passed "$r" || ok=0; done
  printf -v "$var" '%s' "$ok"
  echo "$what tests passed: $ok" >>"$S/session.txt"
}
gate WG_OK "wgmma" cuda_kernels_test-new cuda_model_test-wgmma cuda_train_test-wgmma
gate WF_OK "wgmma-fused" cuda_kernels_test-wgfused cuda_model_test-wgfused cuda_train_test-wgfused
gate WF2_OK "wgmma-fused-2wg" cuda_kernels_test-wgfused cuda_model_test-wgfused2 \
  cuda_train_test-wgfused
gate BG_OK "bias-gradient epilogue" cuda_matmul_test cuda_model_test-bgrad
gate BN_OK "bias gradients from the norm" cuda_kernels_test cuda_model_test-bgradnorm
# Each source of bias gradients has its own model and training runs: norm
# (its model run), qv (norm+qv: model run; the training run it shares with
# the autotuning options), dgelu (cuBLASLt's DGELU_BGRAD: its matmul, model
# and training runs).
gate BQ_OK "bias gradients without the key third" cuda_kernels_test cuda_model_test-bgradnq \
  cuda_train_test-opts
gate BD_OK "bias gradients from the DGELU GEMM" cuda_matmul_test-dgelu \
  cuda_model_test-bgraddgelu cuda_train_test-dgelu
gate IP_OK "in-place / 32-candidate autotuning" cuda_matmul_test cuda_train_test-opts
gate WS_OK "weight gradients on a second stream" cuda_model_test-wstream cuda_train_test-wstream
gate XO_OK "cross-entropy beside the logits GEMM" cuda_kernels_test cuda_matmul_test \
  cuda_model_test-xov cuda_train_test-xov
gate CD_OK "cuDNN attention" cuda_kernels_test-cudnn cuda_model_test-cudnn

# ---- 2. A/B ----------------------------------------------------------------
note "2. A/B"
lim=$(($(left) - 215))
((lim > 260)) && lim=260
if ((lim >= 60)); then
  # Without the attention kernels alone (bench_attention, ~35 s: unchanged
  # since they were last timed; LLMT_AB_KERNELS=1 puts them back): more rows.
  LLMT_AB_KERNELS=${LLMT_AB_KERNELS:-0} LLMT_BENCH_LOGS=$S/ab LLMT_BENCH_BUDGET_S=$((lim - 5)) \
    timeout -k 5 "$lim" \
    bash bench/gpu/run.sh --ab >"$S/ab.out" 2>&1
  echo "run.sh --ab exit $?" >>"$S/session.txt"
  cat "$S/ab/ab.txt" >>"$S/session.txt" 2>/dev/null
else
  echo "skipped: ${lim}s left for it" >>"$S/session.txt"
fi

# ---- 3. the winners combined -------------------------------------------------
# Variant name -> the environment it stands for (run.sh's default A/B list).
declare -A ENV=(
  [fwd-wg]="LLMT_ATTN_FWD=wgmma" [fwd-wg-pipe]="LLMT_ATTN_FWD=wgmma-pipe"
  [fwd-wg-2wg]="LLMT_ATTN_FWD=wgmma-2wg" [fwd-wg-pipe-2wg]="LLMT_ATTN_FWD=wgmma-pipe-2wg"
  [fwd-m64]="LLMT_ATTN_FWD=m64"
  [fwd-n128]="LLMT_ATTN_FWD=m64n128" [bwd-wg]="LLMT_ATTN_BWD=wgmma"
  [bwd-wg-fused]="LLMT_ATTN_BWD=wgmma-fused" [bwd-wg-fused-2wg]="LLMT_ATTN_BWD=wgmma-fused-2wg"
  [bwd-wg-ss]="LLMT_ATTN_BWD=wgmma-ss" [inplace]="LLMT_GEMM_AUTOTUNE=exact+inplace"
  [xent128]="LLMT_XENT_CHUNK_ROWS=128" [xent256]="LLMT_XENT_CHUNK_ROWS=256"
  [xent512]="LLMT_XENT_CHUNK_ROWS=512" [bgrad]="LLMT_BIAS_GRAD=epilogue"
  [bgrad-norm]="LLMT_BIAS_GRAD=norm" [bgrad-dgelu]="LLMT_BIAS_GRAD=dgelu"
  [bgrad-nd]="LLMT_BIAS_GRAD=norm+dgelu" [bgrad-qv]="LLMT_BIAS_GRAD=qv"
  [bgrad-ndq]="LLMT_BIAS_GRAD=norm+dgelu+qv" [cand32]="LLMT_GEMM_CANDIDATES=32"
  [tunewide]="LLMT_GEMM_AUTOTUNE=exact+inplace;LLMT_GEMM_CANDIDATES=32"
  [bgrad-nq]="LLMT_BIAS_GRAD=norm+qv" [wstream]="LLMT_WGRAD_STREAM=1"
  [xov4]="LLMT_XENT_OVERLAP=4" [xov8]="LLMT_XENT_OVERLAP=8" [xov8s22]="LLMT_XENT_OVERLAP=8:22"
  [fwd-cudnn]="LLMT_ATTN_FWD=cudnn" [bwd-cudnn]="LLMT_ATTN_BWD=cudnn"
  [bwd-cudnn-det]="LLMT_ATTN_BWD=cudnn-det")
gain() { awk -v n="$1" '$1 == n && $4 ~ /^[0-9.]+$/ {print $4}' "$S/ab/ab.txt" 2>/dev/null; }
pick() {  # best variant of a group that beats the base by MIN_GAIN
  local best="" bg=$MIN_GAIN v g
  for v in "$@"; do
    [[ $v == *wg* && $WG_OK != 1 ]] && continue
    [[ $v == *wg-fused && $WF_OK != 1 ]] && continue
    [[ $v == *wg-fused-2wg && $WF2_OK != 1 ]] && continue
    [[ $v == bgrad && $BG_OK != 1 ]] && continue
    [[ $v == bgrad-norm && $BN_OK != 1 ]] && continue
    [[ $v == bgrad-dgelu && $BD_OK != 1 ]] && continue
    [[ $v == bgrad-qv && $BQ_OK != 1 ]] && continue
    [[ $v == bgrad-nd && ($BN_OK != 1 || $BD_OK != 1) ]] && continue
    [[ $v == bgrad-nq && ($BN_OK != 1 || $BQ_OK != 1) ]] && continue
    [[ $v == bgrad-ndq && ($BN_OK != 1 || $BQ_OK != 1 || $BD_OK != 1) ]] && continue
    [[ ($v == inplace || $v == cand32 || $v == tunewide) && $IP_OK != 1 ]] && continue
    [[ $v == *cudnn* && $CD_OK != 1 ]] && continue
    [[ $v == wstream && $WS_OK != 1 ]] && continue
    [[ $v == xov* && $XO_OK != 1 ]] && continue
    g=$(gain "$v")
    [[ -n $g ]] && awk -v g="$g" -v b="$bg" 'BEGIN {exit !(g >= b)}' && { best=$v; bg=$g; }
  done
  echo "$best"
}
WIN=()
# bwd-cudnn is timed but never picked: it sums dQ with atomics, and a
# default must keep bit-identical resume.
for group in "fwd-wg fwd-wg-pipe fwd-wg-2wg fwd-wg-pipe-2wg fwd-m64 fwd-n128 fwd-cudnn" \
             "bwd-wg bwd-wg-ss bwd-wg-fused bwd-wg-fused-2wg bwd-cudnn-det" \
             "inplace cand32 tunewide" \
             "xent128 xent256 xent512 xov4 xov8 xov8s22" \
             "bgrad bgrad-norm bgrad-dgelu bgrad-qv bgrad-nq bgrad-nd bgrad-ndq" \
             "wstream"; do
  # shellcheck disable=SC2086
  w=$(pick $group)
  if [[ -n $w ]]; then  # VAR=VALUE[;VAR=VALUE]
    IFS=';' read -r -a parts <<<"${ENV[$w]}"
    WIN+=("${parts[@]}")
  fi
done
note "3. winners: ${WIN[*]:-none}"
# With no winner this measures the default engine vs PyTorch.
budget=$(($(left) - 50))
((budget > 330)) && budget=330
if ((budget >= 120)); then
  env "${WIN[@]}" LLMT_BENCH_LOGS=$S/bench LLMT_BENCH_BUDGET_S=$budget \
    timeout -k 5 $((budget + 10)) bash bench/gpu/run.sh --bench-only >"$S/bench.out" 2>&1
  echo "run.sh --bench-only exit $?" >>"$S/session.txt"
  cat "$S/bench/summary.txt" >>"$S/session.txt" 2>/dev/null
fi
if (($(left) >= 45)); then
  note "profile: ${WIN[*]:-default engine}"
  env "${WIN[@]}" LLMT_BENCH_LOGS=$S/prof timeout -k 5 $(($(left) - 5)) \
    bash bench/gpu/run.sh --profile >"$S/prof.out" 2>&1
  echo "run.sh --profile exit $?" >>"$S/session.txt"
fi
note "done"
