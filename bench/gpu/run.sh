#!/usr/bin/env bash
# GPU check and benchmark in one go, on a machine with one NVIDIA GPU and
# PyTorch but none of the Debian libraries the project builds against. It uses
# the binaries built elsewhere by scripts/gpu-bundle.sh and carried here in
# .gpu-bundle/ (bin/, bin/tests/, lib/).
#
#   bench/gpu/run.sh [--tests-only | --bench-only | --profile | --ab]
#
# 1. prints the GPU and driver;
# 2. runs every GPU test binary in .gpu-bundle/bin/tests (gtest, --gtest_brief=1);
# 3. trains GPT-2 124M and the Llama-style ~350M model with bench_gpu_train
#    (largest micro-batch that fits), then the same model, batch and optimizer
#    in PyTorch (torch_ref.py), and prints tokens/s, MFU and the ratio.
#
# Every step has a timeout and the whole script stays under LLMT_BENCH_BUDGET_S
# (default 470 s); a step that no longer fits is reported as skipped. Logs go
# to LLMT_BENCH_LOGS (default a fresh /tmp dir) and, if $OUT is set, the
# summary, the test log and each benchmark log are copied there.
# Environment: PYTHON (default python3, the one with PyTorch), LLMT_GPU_BUNDLE
# (default .gpu-bundle), LLMT_BENCH_STEPS (default 30), LLMT_BENCH_WARMUP (5),
# LLMT_BENCH_BATCH (default 0: the largest that fits), LLMT_BENCH_BUDGET_S.
# --profile: GPU time per op group of llmt's GPT-2 step (LLMT_CUDA_PROFILE=1)
#   beside the same ops in PyTorch (LLMT_PROFILE_TORCH=0: llmt only).
# --ab: first bench_attention (every attention kernel variant alone, with its
#   deviation from the default's output; LLMT_AB_KERNELS=0 leaves it out),
#   then GPT-2 124M tokens/s for each
#   variant in LLMT_AB_VARIANTS, a space-separated list of NAME or
#   NAME:VAR=VALUE[;VAR=VALUE] (default: the engine as is, three times; the
#   bias gradients from the norm backward, from the DGELU GEMM, without the
#   QKV key third, all three, the norm without the key third, the first
#   two, and from the weight-gradient GEMMs' epilogue; the weight gradients
#   on a second stream; the cross-entropy beside the logits GEMM; autotuning 32
#   candidates per GEMM instead of 8, the GEMMs that accumulate into their
#   output too, and both; the own attention kernels, the wgmma backward,
#   cuDNN's atomic backward; other options, e.g.
#   LLMT_ATTN_FWD=wgmma|wgmma-pipe|wgmma-2wg|m64|m64n128,
#   LLMT_ATTN_BWD=wgmma-fused|wgmma-ss, LLMT_WGMMA_LAYOUT=blocked,
#   LLMT_XENT_CHUNK_ROWS=256, by naming them), side by side in one call,
#   so a switch can be judged in one GPU session. LLMT_AB_STEPS timed steps
#   per variant (default 40).
# Exit status: 0 when every test passed and every benchmark gave a result
# (the throughput targets are reported, not enforced), 1 otherwise, 2 on usage.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD

MODE=all
for a in "$@"; do
  case "$a" in
    --tests-only) MODE=tests ;;
    --bench-only) MODE=bench ;;
    --profile) MODE=profile ;;
    --ab) MODE=ab ;;
    -h|--help) sed -n '2,/^set -uo/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$a' (use --tests-only or --bench-only)" >&2; exit 2 ;;
  esac
done

BUDGET=${LLMT_BENCH_BUDGET_S:-470}
STEPS=${LLMT_BENCH_STEPS:-30}
WARMUP=${LLMT_BENCH_WARMUP:-5}
PY=${PYTHON:-python3}
BUNDLE=${LLMT_GPU_BUNDLE:-$ROOT/.gpu-bundle}
LOGS=${LLMT_BENCH_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/llmt-gpu-bench.XXXXXX")}
mkdir -p "$LOGS"
# Everything printed also lands in run.log.
exec > >(tee "$LOGS/run.log") 2>&1

START=$SECONDS
FAILED=0
say() { printf '\n=== %s (t=%ds)\n' "$*" "$((SECONDS - START))"; }

# Seconds a step may take: at most CAP, and never so long that RESERVE seconds
# (what the later steps need) no longer fit in the budget. Prints 0 when fewer
# than 10 s would be left for it.
allow() {
  local cap=$1 reserve=$2 left
  # Caps and reserves are sized for the default 470 s budget; a smaller
  # budget shrinks them all alike, so no step is starved for a later one.
  cap=$((cap * BUDGET / 470))
  reserve=$((reserve * BUDGET / 470))
  left=$((BUDGET - (SECONDS - START) - reserve))
  ((left > cap)) && left=$cap
  ((left < 10)) && left=0
  echo "$left"
}

pct() { if [[ -n "$1" ]]; then awk -v x="$1" 'BEGIN{printf "%.1f%%", 100*x}'; else echo -; fi; }

# Value of KEY=... in a RESULT line.
field() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<"$2"; }

# $OUT gets few files (the device tool returns at most 8 per call): the
# summary, the test log and one archive of the benchmark logs.
copy_out() {
  [[ -n "${OUT:-}" && -d "${OUT:-}" ]] || return 0
  local f logs=()
  for f in summary.txt tests.log; do
    [[ -f "$LOGS/$f" ]] && cp "$LOGS/$f" "$OUT/"
  done
  for f in run.log gpt2-124m-llmt.log gpt2-124m-torch.log llama-350m-llmt.log \
           llama-350m-torch.log; do
    [[ -f "$LOGS/$f" ]] && logs+=("$f")
  done
  ((${#logs[@]} > 0)) && tar -czf "$OUT/bench-logs.tar.gz" -C "$LOGS" "${logs[@]}"
  return 0
}

# ---- 1. the GPU ------------------------------------------------------------
say "GPU"
if ! command -v nvidia-smi >/dev/null; then
  echo "nvidia-smi not found: this script needs an NVIDIA GPU machine"
  exit 1
fi
timeout 20 nvidia-smi -L
timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
  --format=csv,noheader
timeout 20 nvidia-smi | sed -n 's/.*\(Driver Version: [^ ]*\).*\(CUDA Version: [^ ]*\).*/\1  \2/p'

if [[ ! -d "$BUNDLE/bin" ]]; then
  echo "no bundle at $BUNDLE (build it with scripts/gpu-bundle.sh and carry .gpu-bundle/ here)"
  exit 1
fi

# ---- unpack what gpu-bundle.sh stored compressed (NAME.xz -> NAME), once
while IFS= read -r -d '' z; do
  if command -v xz >/dev/null; then
    xz -dc "$z" >"${z%.xz}.tmp"
  else
    "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' \
      "$z" >"${z%.xz}.tmp"
  fi || { echo "cannot unpack $z"; exit 1; }
  chmod --reference="$z" "${z%.xz}.tmp" && mv "${z%.xz}.tmp" "${z%.xz}" && rm -f "$z"
done < <(find "$BUNDLE" -type f -name '*.xz' -print0)

# ---- libraries: the bundle's, then cuBLAS/cuBLASLt/NCCL from PyTorch's pip wheels
# (libcublasLt alone is ~500 MB, too big to carry), then the CUDA toolkit if any.
PIP_LIBS=$(timeout 60 "$PY" - <<'EOF' 2>/dev/null
import glob, os
dirs = []
try:
    import nvidia
    for root in list(nvidia.__path__):
        for pat in ("*/lib", "*/*/lib"):  # nvidia/cublas/lib (CUDA 12 wheels), nvidia/cu13/lib (13)
            dirs += [d for d in sorted(glob.glob(os.path.join(root, pat))) if os.path.isdir(d)]
except Exception:
    pass
print(":".join(dict.fromkeys(dirs)))
EOF
)
LIBPATH=$BUNDLE/lib
[[ -n "$PIP_LIBS" ]] && LIBPATH+=":$PIP_LIBS"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d "$d" ]] && LIBPATH+=":$d"
done
# Only for the bundle's programs: the bundle's libstdc++ is Debian 12's and
# may be older than what PyTorch's own extensions need.
LLMT_LD_PATH="$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "library path for the bundle: $LLMT_LD_PATH"
bundled() { LD_LIBRARY_PATH="$LLMT_LD_PATH" "$@"; }
# cuda_train_test runs the carried `llmt` binary.
export LLMT_BIN_DIR="$BUNDLE/bin"
for b in "$BUNDLE"/bin/bench_gpu_train "$BUNDLE"/bin/llmt "$BUNDLE"/bin/tests/*; do
  [[ -x "$b" ]] || continue
  missing=$(bundled ldd "$b" 2>/dev/null | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
  [[ -n "$missing" ]] && echo "warning: $(basename "$b") cannot find: $missing"
done

# ---- profile: where llmt's GPT-2 step goes, beside the same ops in PyTorch --
if [[ $MODE == profile ]]; then
  say "llmt GPT-2 124M, GPU time per op group (LLMT_CUDA_PROFILE=1)"
  LLMT_CUDA_PROFILE=1 bundled timeout 120 "$BUNDLE/bin/bench_gpu_train" --model gpt2-124m \
    --batch "${LLMT_PROFILE_BATCH:-64}" --steps 6 --warmup 2 2>&1 | tee "$LOGS/profile-llmt.log"
  if [[ ${LLMT_PROFILE_TORCH:-1} != 0 ]]; then
    say "PyTorch, the same ops"
    timeout 120 "$PY" "$ROOT/bench/gpu/torch_ops.py" --batch "${LLMT_PROFILE_BATCH:-64}" 2>&1 |
      tee "$LOGS/profile-torch.log"
  fi
  [[ -n "${OUT:-}" && -d "${OUT:-}" ]] && cp "$LOGS"/profile-*.log "$OUT/"
  exit 0
fi

# ---- A/B: one GPT-2 benchmark per variant, same batch, side by side --------
if [[ $MODE == ab ]]; then
  # Each variant is NAME or NAME:ENV=VALUE;ENV=VALUE. The default list times
  # the GEMM-side options not yet measured first (the bias-gradient sources,
  # the weight gradients on a second stream, the cross-entropy beside the
  # logits GEMM in 4 or 8 chunks with a quarter or a sixth of the SMs,
  # in-place autotuning), then the attention kernels the default engine
  # (cuDNN's attention under auto where it loads) replaced, with the default
  # engine three times among them so its noise shows. (The other attention
  # variants lost to cuDNN's by 5-8% on an H100 and are left to
  # LLMT_AB_VARIANTS.) Variants that no longer fit LLMT_BENCH_BUDGET_S are
  # skipped, so the table always comes out.
  variants=${LLMT_AB_VARIANTS:-"base bgrad-norm:LLMT_BIAS_GRAD=norm
    bgrad-dgelu:LLMT_BIAS_GRAD=dgelu bgrad-qv:LLMT_BIAS_GRAD=qv
    bgrad-ndq:LLMT_BIAS_GRAD=norm+dgelu+qv wstream:LLMT_WGRAD_STREAM=1 base2
    xov8:LLMT_XENT_OVERLAP=8 xov4:LLMT_XENT_OVERLAP=4 xov8s22:LLMT_XENT_OVERLAP=8:22
    inplace:LLMT_GEMM_AUTOTUNE=exact+inplace cand32:LLMT_GEMM_CANDIDATES=32 tunewide:LLMT_GEMM_AUTOTUNE=exact+inplace;LLMT_GEMM_CANDIDATES=32
    bgrad-nq:LLMT_BIAS_GRAD=norm+qv bgrad-nd:LLMT_BIAS_GRAD=norm+dgelu
    bgrad:LLMT_BIAS_GRAD=epilogue base3
    own:LLMT_ATTN_FWD=own;LLMT_ATTN_BWD=own bwd-wg:LLMT_ATTN_BWD=wgmma
    bwd-cudnn:LLMT_ATTN_BWD=cudnn"}
  attn_ok=1
  if [[ ${LLMT_AB_KERNELS:-1} != 0 && -x "$BUNDLE/bin/bench_attention" ]]; then
    say "attention kernels alone, every variant (GPT-2 124M shape)"
    bundled timeout 120 "$BUNDLE/bin/bench_attention" --cudnn no 2>&1 |
      tee "$LOGS/ab-attention.txt"
    ((PIPESTATUS[0] == 0)) || attn_ok=0
    # cuDNN's rows apart: its failure must not cost the own kernels' rows.
    say "cuDNN attention alone (same shape)"
    bundled timeout 90 "$BUNDLE/bin/bench_attention" --cudnn only 2>&1 |
      tee -a "$LOGS/ab-attention.txt"
    # PyTorch's SDPA on the same shape, for reference (torch_ops.py's first rows).
    echo "PyTorch (torch_ops.py):" >>"$LOGS/ab-attention.txt"
    timeout 120 "$PY" "$ROOT/bench/gpu/torch_ops.py" --batch 64 --attention-only 2>&1 |
      tee -a "$LOGS/ab-attention.txt"
  fi
  AB_ROWS=()
  for v in $variants; do
    name=${v%%:*}
    envs=()
    [[ $v == *:* ]] && IFS=';' read -r -a envs <<<"${v#*:}"
    ab_left=$((BUDGET - (SECONDS - START)))
    if ((ab_left < 30)); then
      say "A/B variant $name skipped: out of time"
      AB_ROWS+=("$name|||")
      continue
    fi
    ((ab_left > 95)) && ab_left=95
    # A wgmma kernel that failed or hung alone would cost a timeout per variant.
    if ((attn_ok == 0)) && [[ $v == *wgmma* ]]; then
      say "A/B variant $name skipped: bench_attention failed"
      AB_ROWS+=("$name|||")
      continue
    fi
    say "A/B variant $name ${envs[*]:-}"
    line=$(env "${envs[@]}" LD_LIBRARY_PATH="$LLMT_LD_PATH" timeout $((ab_left - 5)) \
      "$BUNDLE/bin/bench_gpu_train" --model gpt2-124m --batch "${LLMT_BENCH_BATCH:-64}" \
      --steps "${LLMT_AB_STEPS:-40}" --warmup 3 2>&1 | tee "$LOGS/ab-$name.log" | grep '^RESULT ' | tail -1)
    AB_ROWS+=("$name|$(field tokens_per_s "$line")|$(field mfu "$line")|$(field last_loss "$line")")
  done
  # "vs base": tokens/s over the mean of the variants named base* (the
  # default engine, run more than once so the noise shows).
  base=$(for r in "${AB_ROWS[@]}"; do
    IFS='|' read -r n t _ _ <<<"$r"
    [[ $n == base* && -n $t ]] && echo "$t"
  done | awk '{s += $1; k++} END {if (k) printf "%.1f", s / k}')
  printf '\n%-14s %12s %8s %8s %10s\n' variant "tokens/s" MFU "vs base" "last loss"
  for r in "${AB_ROWS[@]}"; do
    IFS='|' read -r n t m l <<<"$r"
    rel=-
    [[ -n $t && -n $base ]] && rel=$(awk -v t="$t" -v b="$base" 'BEGIN {printf "%.3f", t / b}')
    printf '%-14s %12s %8s %8s %10s\n' "$n" "${t:--}" "$(pct "$m")" "$rel" "${l:--}"
  done | tee "$LOGS/ab.txt"
  if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then  # three files: tables and one log archive
    cp "$LOGS"/ab*.txt "$OUT/" 2>/dev/null
    (cd "$LOGS" && tar -czf "$OUT/ab-logs.tar.gz" ab-*.log 2>/dev/null)
  fi
  exit 0
fi

# ---- 2. GPU tests -------------------------------------------------------------
TEST_ROWS=()
if [[ $MODE != bench ]]; then
  say "GPU tests"
  : >"$LOGS/tests.log"
  shopt -s nullglob
  tests=("$BUNDLE"/bin/tests/*)
  shopt -u nullglob
  [[ ${#tests[@]} -eq 0 ]] && { echo "no test binaries in $BUNDLE/bin/tests"; FAILED=1; }
  # The benchmarks need ~330 s, so tests get what is left of the budget.
  reserve=$([[ $MODE == tests ]] && echo 0 || echo 330)
  # The A/B kernels (wgmma, the forward tilings, cuDNN's attention) get their
  # own processes: a fault there (a sticky CUDA error poisons the process)
  # must not fail the default kernels' tests of the same binary. RUNS holds
  # "binary|gtest filter|label|env" (env: VAR=VALUE;VAR=VALUE). The model and
  # training tests also run once with the wgmma attention kernels, as if they
  # were the default (what a change of the default needs), the model tests
  # with the bias gradients from the GEMM epilogue, from the norm backward
  # (alone and without the QKV key third) and from the DGELU GEMM, and the
  # training tests (bit-identical resume) with norm+qv, in-place autotuning
  # and 32 autotuning candidates together, and with dgelu; both again with
  # the weight gradients on a second stream (LLMT_WGRAD_STREAM=1: every
  # model test, parity with the CPU included, and the training tests'
  # resume and overlapped all-reduce on two streams: TRAIN_CORE) and with
  # the cross-entropy beside the logits GEMM (LLMT_XENT_OVERLAP=4). The DGELU bias
  # tests (cuBLASLt's DGELU_BGRAD epilogue) run only in the dgelu runs, so
  # that a failure there gates dgelu alone. The fused wgmma
  # backwards (wgmma-fused, -2wg: blocks wait on each other, a fault could
  # trap) have their kernel, model and training runs apart too (the training
  # test, bit-identical resume at T 192, sets both variants itself). The cuDNN attention
  # tests (kernels; the model's loss curve; bit-identical resume with the
  # deterministic cuDNN backward) run apart and require cuDNN to
  # have run (LLMT_REQUIRE_CUDNN=1; libcudnn comes from PyTorch's wheels,
  # PIP_LIBS); the kernel test logs cuDNN's own errors, the diagnosis if it
  # declines.
  NEW_KERNEL_TESTS='*Wgmma*:*ForwardVariants*'
  # The training tests an engine option needs: training and checkpoints,
  # bit-identical resume, fp32 against the CPU step by step, and the NCCL
  # all-reduce overlapped with the backward.
  TRAIN_CORE='*.Bf16TrainsAndCheckpoints/*:*.ResumeIsBitIdentical/*:*.Fp32MatchesCpu/*'
  TRAIN_CORE+=':*.NcclWorldSizeOneMatchesLocal/*'
  # The model tests of the second streams (the weight-gradient stream, the
  # cross-entropy overlap, the gradient-ready events) run in the default,
  # wstream and xov runs only (the dgelu run keeps its DGELU stream test):
  # the other runs change nothing they test, and the GPU time is scarce.
  STREAM_TESTS='CudaModel.WeightGradientStreamIsBitIdentical:*XentOverlapGives*'
  STREAM_TESTS+=':*GradReadyRangesAreComplete*'
  FUSED_ENV='LLMT_ATTN_FWD=wgmma;LLMT_ATTN_BWD=wgmma-fused'
  FUSED2_ENV='LLMT_ATTN_FWD=wgmma;LLMT_ATTN_BWD=wgmma-fused-2wg'
  RUNS=()
  for t in "${tests[@]}"; do
    case $(basename "$t") in
      cuda_kernels_test)
        RUNS+=("$t|-$NEW_KERNEL_TESTS:*Cudnn*|cuda_kernels_test|"
               "$t|$NEW_KERNEL_TESTS-*WgmmaFused*|cuda_kernels_test-new|"
               "$t|*WgmmaFused*|cuda_kernels_test-wgfused|"
               "$t|*Cudnn*|cuda_kernels_test-cudnn|LLMT_REQUIRE_CUDNN=1;CUDNN_LOGERR_DBG=1;CUDNN_LOGDEST_DBG=stderr") ;;
      cuda_matmul_test)
        RUNS+=("$t|-*DGeluBias*|cuda_matmul_test|"
               "$t|*DGeluBias*|cuda_matmul_test-dgelu|") ;;
      cuda_model_test)
        RUNS+=("$t|-*Cudnn*:*DGelu*|cuda_model_test|"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-wgmma|LLMT_ATTN_FWD=wgmma;LLMT_ATTN_BWD=wgmma"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-wgfused|$FUSED_ENV"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-wgfused2|$FUSED2_ENV"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-bgrad|LLMT_BIAS_GRAD=epilogue"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-bgradnorm|LLMT_BIAS_GRAD=norm"
               "$t|-*Cudnn*:*DGelu*:$STREAM_TESTS|cuda_model_test-bgradnq|LLMT_BIAS_GRAD=norm+qv"
               "$t|-*Cudnn*:$STREAM_TESTS|cuda_model_test-bgraddgelu|LLMT_BIAS_GRAD=dgelu"
               "$t|-*Cudnn*:*DGelu*|cuda_model_test-wstream|LLMT_WGRAD_STREAM=1"
               "$t|-*Cudnn*:*DGelu*|cuda_model_test-xov|LLMT_XENT_OVERLAP=4"
               "$t|*Cudnn*|cuda_model_test-cudnn|LLMT_REQUIRE_CUDNN=1") ;;
      cuda_train_test)
        RUNS+=("$t|-*Cudnn*:*WgmmaFused*|cuda_train_test|"
               "$t|-*Cudnn*:*WgmmaFused*|cuda_train_test-wgmma|LLMT_ATTN_FWD=wgmma;LLMT_ATTN_BWD=wgmma"
               "$t|*WgmmaFused*|cuda_train_test-wgfused|"
               "$t|-*Cudnn*:*WgmmaFused*|cuda_train_test-opts|LLMT_BIAS_GRAD=norm+qv;LLMT_GEMM_AUTOTUNE=exact+inplace;LLMT_GEMM_CANDIDATES=32"
               "$t|*.Bf16TrainsAndCheckpoints/*:*.ResumeIsBitIdentical/*|cuda_train_test-dgelu|LLMT_BIAS_GRAD=dgelu"
               "$t|$TRAIN_CORE|cuda_train_test-wstream|LLMT_WGRAD_STREAM=1"
               "$t|$TRAIN_CORE|cuda_train_test-xov|LLMT_XENT_OVERLAP=4"
               "$t|*Cudnn*|cuda_train_test-cudnn|LLMT_REQUIRE_CUDNN=1") ;;
      *) RUNS+=("$t|*|$(basename "$t")|") ;;
    esac
  done
  for run in "${RUNS[@]}"; do
    IFS='|' read -r t filter name runenv <<<"$run"
    [[ -x "$t" ]] || continue
    envs=()
    [[ -n $runenv ]] && IFS=';' read -r -a envs <<<"$runenv"
    # cuDNN's runs take seconds when it works (plans are built on first use:
    # their caps do not shrink with the budget); a hang must not eat the
    # session.
    cap=120
    [[ $name == *-cudnn ]] && cap=$((60 * 470 / BUDGET))
    [[ $name == cuda_train_test-cudnn ]] && cap=$((90 * 470 / BUDGET))
    lim=$(allow "$cap" "$reserve")
    if ((lim == 0)); then
      TEST_ROWS+=("$name|SKIPPED (out of time)|")
      FAILED=1
      continue
    fi
    echo "--- $name (timeout ${lim}s) ${envs[*]:-}" | tee -a "$LOGS/tests.log"
    t0=$SECONDS
    env "${envs[@]}" LD_LIBRARY_PATH="$LLMT_LD_PATH" timeout -k 5 "$lim" "$t" --gtest_brief=1 \
      --gtest_filter="$filter" >"$LOGS/$name.log" 2>&1
    rc=$?
    cat "$LOGS/$name.log" >>"$LOGS/tests.log"
    passed=$(sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$LOGS/$name.log" | tail -1)
    skipped=$(sed -n 's/.*\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$LOGS/$name.log" | tail -1)
    failed=$(sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$LOGS/$name.log" | tail -1)
    detail="passed ${passed:-0}, skipped ${skipped:-0}, failed ${failed:-0}, $((SECONDS - t0))s"
    if ((rc == 0)) && [[ ${passed:-0} == 0 && ${skipped:-0} != 0 ]]; then
      # On a GPU machine every test skipping means the GPU was not usable.
      TEST_ROWS+=("$name|ALL SKIPPED|$detail")
      FAILED=1
    elif ((rc == 0)); then
      TEST_ROWS+=("$name|PASS|$detail")
    else
      ((rc == 124 || rc == 137)) && detail="TIMEOUT after ${lim}s; $detail"
      TEST_ROWS+=("$name|FAIL (rc=$rc)|$detail")
      FAILED=1
      grep -E '^\[  FAILED  \]|Failure|error' "$LOGS/$name.log" | head -20
    fi
  done
  printf '\n%-26s %-22s %s\n' "test binary" "result" "detail"
  for r in "${TEST_ROWS[@]}"; do
    IFS='|' read -r n s d <<<"$r"
    printf '%-26s %-22s %s\n' "$n" "$s" "$d"
  done
fi

# ---- 3. benchmarks ------------------------------------------------------------
declare -A RES
bench_model() {  # MODEL LLMT_CAP TORCH_CAP RESERVE_AFTER
  local model=$1 llmt_cap=$2 torch_cap=$3 after=$4 lim line batch rc
  say "$model: llmt"
  lim=$(allow "$llmt_cap" $((after + torch_cap / 2)))
  if ((lim == 0)); then echo "skipped: out of time"; FAILED=1; return; fi
  bundled timeout -k 5 "$lim" "$BUNDLE/bin/bench_gpu_train" --model "$model" --batch "${LLMT_BENCH_BATCH:-0}" --seq 1024 \
    --steps "$STEPS" --warmup "$WARMUP" --json "$LOGS/$model-llmt.json" 2>&1 | tee "$LOGS/$model-llmt.log"
  rc=${PIPESTATUS[0]}
  line=$(grep '^RESULT ' "$LOGS/$model-llmt.log" | tail -1)
  ((rc != 0)) && FAILED=1
  if [[ -z "$line" ]]; then
    echo "bench_gpu_train gave no result (rc=$rc; see $model-llmt.log)"
    FAILED=1
    return
  fi
  batch=$(field batch "$line")
  RES[$model.batch]=$batch
  RES[$model.llmt_tps]=$(field tokens_per_s "$line")
  RES[$model.llmt_mfu]=$(field mfu "$line")

  say "$model: PyTorch, batch $batch"
  lim=$(allow "$torch_cap" "$after")
  if ((lim == 0)); then echo "skipped: out of time"; FAILED=1; return; fi
  PYTHONUNBUFFERED=1 timeout -k 5 "$lim" "$PY" "$ROOT/bench/gpu/torch_ref.py" --model "$model" \
    --batch "$batch" --seq 1024 --steps "$STEPS" --warmup "$WARMUP" 2>&1 | tee "$LOGS/$model-torch.log"
  rc=${PIPESTATUS[0]}
  line=$(grep '^RESULT ' "$LOGS/$model-torch.log" | tail -1)
  if [[ -z "$line" ]]; then
    echo "torch_ref.py gave no result (rc=$rc; see $model-torch.log)"
    FAILED=1
    return
  fi
  RES[$model.torch_tps]=$(field tokens_per_s "$line")
  RES[$model.torch_mfu]=$(field mfu "$line")
  RES[$model.torch_accum]=$(field accum "$line")
}

if [[ $MODE != tests ]]; then
  bench_model gpt2-124m 100 170 200
  bench_model llama-350m 100 170 0
fi

# ---- summary -----------------------------------------------------------------
{
  say "summary"
  if [[ $MODE != bench ]]; then
    ok=0
    for r in "${TEST_ROWS[@]}"; do [[ $r == *"|PASS|"* ]] && ok=$((ok + 1)); done
    echo "GPU tests: $ok of ${#TEST_ROWS[@]} binaries passed"
  fi
  if [[ $MODE != tests ]]; then
    printf '%-11s %5s %12s %8s %12s %9s %7s\n' model batch "llmt tok/s" "llmt MFU" "torch tok/s" \
      "torch MFU" ratio
    for m in gpt2-124m llama-350m; do
      lt=${RES[$m.llmt_tps]:-} tt=${RES[$m.torch_tps]:-}
      ratio=-
      [[ -n "$lt" && -n "$tt" ]] && ratio=$(awk -v a="$lt" -v b="$tt" 'BEGIN{printf "%.2fx", a/b}')
      tacc=${RES[$m.torch_accum]:-1}
      printf '%-11s %5s %12s %8s %12s %9s %7s%s\n' "$m" "${RES[$m.batch]:--}" "${lt:--}" \
        "$(pct "${RES[$m.llmt_mfu]:-}")" "${tt:--}" "$(pct "${RES[$m.torch_mfu]:-}")" "$ratio" \
        "$([[ $tacc != 1 ]] && echo "  (torch: $tacc micro-batches)")"
    done
    # The issue's targets on one H100 (reported; they do not change the exit code).
    lt=${RES[gpt2-124m.llmt_tps]:-0} tt=${RES[gpt2-124m.torch_tps]:-0}
    awk -v a="$lt" -v b="$tt" 'BEGIN{
      printf "target gpt2-124m >= 600000 tok/s: %s\n", (a >= 600000 ? "met" : "NOT met");
      if (b > 0) printf "target gpt2-124m >= 1.3x PyTorch: %s (%.2fx)\n", (a >= 1.3 * b ? "met" : "NOT met"), a / b;
    }'
  fi
  echo "total time $((SECONDS - START)) s; logs in $LOGS"
} | tee "$LOGS/summary.txt"

copy_out
exit "$FAILED"
