#!/usr/bin/env bash
# bench/gpu/session.sh (and the run.sh modes it calls) end to end with fakes
# for everything the GPU machine provides -- nvidia-smi, the carried bundle's
# binaries, PyTorch's scripts -- so that a mistake in the scripts shows here,
# not in a scarce GPU session. Checks: the test table and the gates, the
# default A/B table, the winners the session combines (and that they reach
# the benchmark run), the summary, and the files handed back in $OUT; then,
# with the attention variants named, a failing cuDNN test and a failing
# bias-from-the-norm test (no cuDNN winner: the fused wgmma backward wins;
# the DGELU bias gradient instead of both), with those and the fused wgmma
# and DGELU/in-place runs failing too (no winner), with only the DGELU
# runs failing (the other sources still win), and with an A/B budget too
# small for every variant (the table still prints).
#
#   tests/unit/cuda/gpu_session_test.sh [repo root]
set -uo pipefail
ROOT=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../../..}" && pwd)
W=$(mktemp -d /tmp/llmt-session-test.XXXXXX)
trap 'rm -rf "$W"' EXIT
FAIL=0
check() {  # DESCRIPTION FILE REGEX
  if grep -qE -- "$3" "$2"; then
    echo "ok: $1"
  else
    echo "FAILED: $1 (no /$3/ in $2)"
    FAIL=1
  fi
}

mkdir -p "$W/fakebin" "$W/bundle/bin/tests" "$W/bundle/lib"
cat >"$W/fakebin/nvidia-smi" <<'EOF'
#!/bin/sh
echo "GPU 0: Fake H100 (UUID: GPU-0)"
EOF
# tokens/s by variant: the non-deterministic cuDNN backward is the fastest
# but must never be picked; the cuDNN forward and the deterministic cuDNN
# backward win, then the fused wgmma backward; the wgmma forward and the own
# kernels lose; the bias gradients from the norm and the DGELU GEMM and
# without the key third win together (each alone less), in-place
# autotuning and 32 autotuning candidates win, both together more, so do
# the weight gradients on a second stream and the cross-entropy beside the
# logits GEMM (8 chunks best); the bias-gradient epilogue loses; every
# call's settings are recorded.
cat >"$W/bundle/bin/bench_gpu_train" <<'EOF'
#!/bin/bash
model=gpt2-124m batch=64
while (($#)); do case $1 in --model) model=$2; shift ;; --batch) [[ $2 != 0 ]] && batch=$2; shift ;; esac; shift; done
tps=500000
[[ ${LLMT_ATTN_FWD:-} == cudnn ]] && tps=$((tps + 20000))
[[ ${LLMT_ATTN_BWD:-} == cudnn-det ]] && tps=$((tps + 40000))
[[ ${LLMT_ATTN_BWD:-} == cudnn ]] && tps=$((tps + 45000))
[[ ${LLMT_ATTN_BWD:-} == own ]] && tps=$((tps - 50000))
[[ ${LLMT_ATTN_BWD:-} == wgmma-fused ]] && tps=$((tps + 25000))
[[ ${LLMT_ATTN_BWD:-} == wgmma-fused-2wg ]] && tps=$((tps + 15000))
[[ ${LLMT_ATTN_FWD:-} == wgmma ]] && tps=$((tps - 10000))
case ${LLMT_BIAS_GRAD:-} in
  norm) tps=$((tps + 15000)) ;;
  dgelu) tps=$((tps + 10000)) ;;
  norm+dgelu) tps=$((tps + 22000)) ;;
  qv) tps=$((tps + 4000)) ;;
  norm+dgelu+qv) tps=$((tps + 26000)) ;;
  norm+qv) tps=$((tps + 18000)) ;;
  epilogue) tps=$((tps - 5000)) ;;
esac
[[ ${LLMT_GEMM_AUTOTUNE:-} == exact+inplace ]] && tps=$((tps + 8000))
[[ ${LLMT_GEMM_CANDIDATES:-} == 32 ]] && tps=$((tps + 6000))
[[ ${LLMT_GEMM_CANDIDATES:-} == 32 && ${LLMT_GEMM_AUTOTUNE:-} == exact+inplace ]] &&
  tps=$((tps + 3000))
[[ ${LLMT_WGRAD_STREAM:-} == 1 ]] && tps=$((tps + 7000))
case ${LLMT_XENT_OVERLAP:-} in
  8) tps=$((tps + 12000)) ;;
  4) tps=$((tps + 8000)) ;;
  8:22) tps=$((tps + 10000)) ;;
esac
echo "$model fwd=${LLMT_ATTN_FWD:-} bwd=${LLMT_ATTN_BWD:-} bias=${LLMT_BIAS_GRAD:-} tune=${LLMT_GEMM_AUTOTUNE:-} cand=${LLMT_GEMM_CANDIDATES:-} ws=${LLMT_WGRAD_STREAM:-} xov=${LLMT_XENT_OVERLAP:-} profile=${LLMT_CUDA_PROFILE:-}" >>"$CALLS"
echo "RESULT name=$model impl=llmt batch=$batch seq=1024 params=1 tokens_per_s=$tps.0 mfu=0.40 step_ms=100 first_loss=10.9 last_loss=9.5"
EOF
cat >"$W/bundle/bin/bench_attention" <<'EOF'
#!/bin/bash
echo "forward ms (fake) $*"
EOF
# gtest binaries: pass, except the cuDNN runs when FAIL_CUDNN is set, the
# fused wgmma backward's (kernel and training tests by filter, model tests by
# environment) when FAIL_WGFUSED is, the bias-gradients-from-the-norm model
# run when FAIL_BGNORM is, and every run of the DGELU bias gradient (its
# matmul run by filter, its model and training runs by environment) when
# FAIL_BGDGELU is, or the runs with in-place autotuning when FAIL_TUNE is,
# or the runs with the weight gradients on a second stream when FAIL_WS is,
# or those with the cross-entropy beside the logits GEMM when FAIL_XO is.
for t in comm_gpu_test cuda_kernels_test cuda_matmul_test cuda_model_test cuda_train_test; do
  cat >"$W/bundle/bin/tests/$t" <<'EOF'
#!/bin/bash
if [[ -n ${FAIL_CUDNN:-} && ${LLMT_REQUIRE_CUDNN:-} == 1 ]] ||
   [[ -n ${FAIL_BGNORM:-} && ${LLMT_BIAS_GRAD:-} == norm ]] ||
   [[ -n ${FAIL_BGDGELU:-} && (${LLMT_BIAS_GRAD:-} == *dgelu* ||
                               "$*" == *"filter=*DGeluBias*"*) ]] ||
   [[ -n ${FAIL_TUNE:-} && ${LLMT_GEMM_AUTOTUNE:-} == *inplace* ]] ||
   [[ -n ${FAIL_WS:-} && ${LLMT_WGRAD_STREAM:-} == 1 ]] ||
   [[ -n ${FAIL_XO:-} && -n ${LLMT_XENT_OVERLAP:-} ]] ||
   [[ -n ${FAIL_WGFUSED:-} && ("$*" == *"filter=*WgmmaFused*"* ||
                               ${LLMT_ATTN_BWD:-} == wgmma-fused*) ]]; then
  echo "[  FAILED  ] 1 test, listed below:"; exit 1
fi
echo "[  PASSED  ] 3 tests."
EOF
done
# PyTorch: torch_ref.py prints its RESULT; torch_ops.py some rows; the
# library-path probe (python -) nothing.
cat >"$W/fakepy" <<'EOF'
#!/bin/bash
case "${1:-}" in
  -) cat >/dev/null ;;
  */torch_ref.py) echo "RESULT impl=torch tokens_per_s=480000.0 mfu=0.39 accum=1" ;;
  */torch_ops.py) echo "  attention_fwd 0.3 ms" ;;
esac
EOF
chmod +x "$W/fakebin/nvidia-smi" "$W/bundle/bin/"* "$W/bundle/bin/tests/"* "$W/fakepy"

run_session() {  # NAME [VAR=VALUE ...]
  local name=$1
  shift
  mkdir -p "$W/$name/out"
  : >"$W/$name/calls"
  (cd "$ROOT" && env TMPDIR="$W" PATH="$W/fakebin:$PATH" PYTHON="$W/fakepy" \
    LLMT_GPU_BUNDLE="$W/bundle" OUT="$W/$name/out" CALLS="$W/$name/calls" LLMT_BENCH_STEPS=2 LLMT_BENCH_WARMUP=1 "$@" \
    timeout 300 bash bench/gpu/session.sh >"$W/$name/session.out" 2>&1)
  echo "session $name: exit $?"
}

# 1. Everything passes, the default A/B list: the bias gradients from the
# norm and the DGELU GEMM together and in-place autotuning win; the atomic
# cuDNN backward, though fastest, is never picked.
run_session ok LLMT_SESSION_S=450
S=$W/ok/out/session.txt
check "session.txt handed back" "$S" "##### done"
check "cuDNN runs in the test table" "$S" "^cuda_kernels_test-cudnn +PASS"
check "cuDNN model and training runs" "$S" "^cuda_train_test-cudnn +PASS"
check "cuDNN gate open" "$S" "cuDNN attention tests passed: 1"
check "fused wgmma runs in the test table" "$S" "^cuda_kernels_test-wgfused +PASS"
check "fused wgmma training run" "$S" "^cuda_train_test-wgfused +PASS"
check "fused two-warpgroup wgmma model run" "$S" "^cuda_model_test-wgfused2 +PASS"
check "DGELU bias-gradient matmul run" "$S" "^cuda_matmul_test-dgelu +PASS"
check "DGELU bias-gradient model run" "$S" "^cuda_model_test-bgraddgelu +PASS"
check "DGELU bias-gradient training run" "$S" "^cuda_train_test-dgelu +PASS"
check "norm without the key third model run" "$S" "^cuda_model_test-bgradnq +PASS"
check "training run with the GEMM options" "$S" "^cuda_train_test-opts +PASS"
check "model run with the weight gradients on a second stream" "$S" "^cuda_model_test-wstream +PASS"
check "training run with the weight gradients on a second stream" "$S" \
  "^cuda_train_test-wstream +PASS"
check "model run with the cross-entropy overlap" "$S" "^cuda_model_test-xov +PASS"
check "training run with the cross-entropy overlap" "$S" "^cuda_train_test-xov +PASS"
check "A/B second and third base rows" "$S" "^base3 +500000.0"
check "A/B row for the own attention kernels" "$S" "^own +450000.0 .* 0\.900"
check "A/B row for the atomic cuDNN backward" "$S" "^bwd-cudnn +545000.0 .* 1\.090"
check "A/B row for the bias gradients from the norm" "$S" "^bgrad-norm +515000.0 .* 1\.030"
check "A/B row for the bias gradients from the DGELU GEMM" "$S" "^bgrad-dgelu +510000.0 .* 1\.020"
check "A/B row for norm and DGELU" "$S" "^bgrad-nd +522000.0 .* 1\.044"
check "A/B row without the key third" "$S" "^bgrad-qv +504000.0 .* 1\.008"
check "A/B row for all three" "$S" "^bgrad-ndq +526000.0 .* 1\.052"
check "A/B row for norm without the key third" "$S" "^bgrad-nq +518000.0 .* 1\.036"
check "A/B row for in-place autotuning" "$S" "^inplace +508000.0 .* 1\.016"
check "A/B row for the weight-gradient stream" "$S" "^wstream +507000.0 .* 1\.014"
check "A/B row for the cross-entropy overlap in 8 chunks" "$S" "^xov8 +512000.0 .* 1\.024"
check "A/B row for the cross-entropy overlap in 4 chunks" "$S" "^xov4 +508000.0 .* 1\.016"
check "A/B row for the cross-entropy overlap on 22 SMs" "$S" "^xov8s22 +510000.0 .* 1\.020"
check "A/B row for 32 autotuning candidates" "$S" "^cand32 +506000.0 .* 1\.012"
check "A/B row for both autotuning options" "$S" "^tunewide +517000.0 .* 1\.034"
check "A/B row for the bias-gradient epilogue" "$S" "^bgrad +495000.0 .* 0\.990"
check "bias gradients from the norm: gate open" "$S" "bias gradients from the norm tests passed: 1"
check "bias gradients from the DGELU GEMM: gate open" "$S" "from the DGELU GEMM tests passed: 1"
check "bias gradients without the key third: gate open" "$S" "without the key third tests passed: 1"
check "in-place autotuning: gate open" "$S" "32-candidate autotuning tests passed: 1"
check "weight-gradient stream: gate open" "$S" "on a second stream tests passed: 1"
check "cross-entropy overlap: gate open" "$S" "beside the logits GEMM tests passed: 1"
check "winners: the autotuning options, all bias-gradient sources, the second stream, never atomic cuDNN" \
  "$S" "winners: LLMT_GEMM_AUTOTUNE=exact\+inplace LLMT_GEMM_CANDIDATES=32 LLMT_XENT_OVERLAP=8 LLMT_BIAS_GRAD=norm\+dgelu\+qv LLMT_WGRAD_STREAM=1 \\("
check "the benchmark ran with the winners" "$W/ok/calls" \
  "^llama-350m fwd= bwd= bias=norm\+dgelu\+qv tune=exact\+inplace cand=32 ws=1 xov=8 profile=$"
check "the profile ran with the winners" "$W/ok/calls" \
  "^gpt2-124m fwd= bwd= bias=norm\+dgelu\+qv tune=exact\+inplace cand=32 ws=1 xov=8 profile=1$"
check "summary ratio" "$S" "gpt2-124m +64 +562000.0 .* 1\.17x"
for f in session.txt tests.log logs.tar.gz; do
  [[ -s "$W/ok/out/$f" ]] && echo "ok: \$OUT/$f" || { echo "FAILED: no \$OUT/$f"; FAIL=1; }
done
[[ ! -e "$W/ok/out/ab-attention.txt" ]] && echo "ok: no attention kernels alone in a session" ||
  { echo "FAILED: the session timed the attention kernels alone"; FAIL=1; }

# 2. The attention variants named; the cuDNN tests and the bias-from-the-norm
# model run fail: no cuDNN winner, the fused wgmma backward wins; the DGELU
# bias gradient alone (both together need both gates).
ATTN_AB="base own:LLMT_ATTN_FWD=own;LLMT_ATTN_BWD=own fwd-cudnn:LLMT_ATTN_FWD=cudnn
  bwd-cudnn-det:LLMT_ATTN_BWD=cudnn-det bwd-wg-fused:LLMT_ATTN_BWD=wgmma-fused
  bwd-wg-fused-2wg:LLMT_ATTN_BWD=wgmma-fused-2wg fwd-wg:LLMT_ATTN_FWD=wgmma
  bwd-cudnn:LLMT_ATTN_BWD=cudnn bgrad-norm:LLMT_BIAS_GRAD=norm
  bgrad-dgelu:LLMT_BIAS_GRAD=dgelu bgrad-nd:LLMT_BIAS_GRAD=norm+dgelu
  bgrad-ndq:LLMT_BIAS_GRAD=norm+dgelu+qv inplace:LLMT_GEMM_AUTOTUNE=exact+inplace base2"
run_session nocudnn LLMT_SESSION_S=450 LLMT_AB_VARIANTS="$ATTN_AB" FAIL_CUDNN=1 FAIL_BGNORM=1
S=$W/nocudnn/out/session.txt
check "A/B row for the deterministic cuDNN backward" "$S" "^bwd-cudnn-det +540000.0 .* 1\.080"
check "A/B row for the fused wgmma backward" "$S" "^bwd-wg-fused +525000.0 .* 1\.050"
check "A/B row for the two-warpgroup fused backward" "$S" "^bwd-wg-fused-2wg +515000.0 .* 1\.030"
check "cuDNN gate closed" "$S" "cuDNN attention tests passed: 0"
check "failing cuDNN run reported" "$S" "^cuda_kernels_test-cudnn +FAIL"
check "fused wgmma gate open" "$S" "wgmma-fused tests passed: 1"
check "bias gradients from the norm: gate closed" "$S" "bias gradients from the norm tests passed: 0"
check "failing bias-from-norm run reported" "$S" "^cuda_model_test-bgradnorm +FAIL"
check "the next backward, in-place autotuning, the DGELU bias gradient alone win" "$S" \
  "winners: LLMT_ATTN_BWD=wgmma-fused LLMT_GEMM_AUTOTUNE=exact\+inplace LLMT_BIAS_GRAD=dgelu \\("

# 2b. Their tests fail too: no winner without passing tests (the other wgmma
# runs still pass, so only the fused variant's own gate can stop it; the
# DGELU runs fail, which closes the dgelu gate alone; the training run with
# in-place autotuning fails, which closes that gate and the qv one).
run_session nofused LLMT_SESSION_S=450 LLMT_AB_VARIANTS="$ATTN_AB" FAIL_CUDNN=1 FAIL_WGFUSED=1 \
  FAIL_BGNORM=1 FAIL_BGDGELU=1 FAIL_TUNE=1 FAIL_WS=1 FAIL_XO=1
S=$W/nofused/out/session.txt
check "fused wgmma gate closed" "$S" "wgmma-fused tests passed: 0"
check "two-warpgroup fused wgmma gate closed" "$S" "wgmma-fused-2wg tests passed: 0"
check "wgmma gate still open" "$S" "wgmma tests passed: 1"
check "failing fused wgmma run reported" "$S" "^cuda_kernels_test-wgfused +FAIL"
check "DGELU bias-gradient gate closed" "$S" "from the DGELU GEMM tests passed: 0"
check "failing DGELU matmul run reported" "$S" "^cuda_matmul_test-dgelu +FAIL"
check "the other matmul run still passes" "$S" "^cuda_matmul_test +PASS"
check "the norm+qv model run still passes" "$S" "^cuda_model_test-bgradnq +PASS"
check "key-third gate closed by the training run" "$S" "without the key third tests passed: 0"
check "in-place autotuning gate closed" "$S" "32-candidate autotuning tests passed: 0"
check "failing training run with the GEMM options reported" "$S" "^cuda_train_test-opts +FAIL"
check "weight-gradient stream gate closed" "$S" "on a second stream tests passed: 0"
check "failing two-stream training run reported" "$S" "^cuda_train_test-wstream +FAIL"
check "cross-entropy overlap gate closed" "$S" "beside the logits GEMM tests passed: 0"
check "no winner without passing tests" "$S" "winners: none"

# 2c. Only cuBLASLt's DGELU_BGRAD fails, with the default list: dgelu and
# every combination with it are out, the rest still win.
run_session nodgelu LLMT_SESSION_S=450 FAIL_BGDGELU=1
S=$W/nodgelu/out/session.txt
check "DGELU gate closed alone" "$S" "from the DGELU GEMM tests passed: 0"
check "key-third gate still open" "$S" "without the key third tests passed: 1"
check "norm without the key third, the autotuning options and the stream win without dgelu" \
  "$S" "winners: LLMT_GEMM_AUTOTUNE=exact\+inplace LLMT_GEMM_CANDIDATES=32 LLMT_XENT_OVERLAP=8 LLMT_BIAS_GRAD=norm\+qv LLMT_WGRAD_STREAM=1 \\("

# 3. An A/B budget too small for every variant: skipped rows, table printed.
mkdir -p "$W/ab"
(cd "$ROOT" && env PATH="$W/fakebin:$PATH" PYTHON="$W/fakepy" LLMT_GPU_BUNDLE="$W/bundle" \
  CALLS="$W/ab/calls" LLMT_BENCH_LOGS="$W/ab/logs" LLMT_BENCH_BUDGET_S=20 \
  LLMT_AB_VARIANTS="base slow:SLEEP=1 base2" timeout 120 bash bench/gpu/run.sh --ab \
  >"$W/ab/out" 2>&1)
check "A/B table with a tiny budget" "$W/ab/out" "^base2 "
check "run.sh --ab times the attention kernels alone by default" "$W/ab/out" \
  "attention kernels alone"
check "cuDNN's attention rows timed apart" "$W/ab/logs/ab-attention.txt" "--cudnn only"
check "A/B variants skipped when out of time" "$W/ab/out" "skipped: out of time"

((FAIL == 0)) && echo "PASS" || { echo "see $W (kept)"; trap - EXIT; }
exit "$FAIL"
