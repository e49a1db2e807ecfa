#!/usr/bin/env bash
# Builds what bench/gpu/run.sh needs on a GPU machine that has PyTorch but none
# of this project's Debian libraries, and gathers it into .gpu-bundle/:
#
#   bin/bench_gpu_train, bin/llmt       stripped executables (and bin/bench_attention)
#   bin/tests/<gpu test binaries>       GoogleTest binaries labelled gpu
#   lib/                                every shared library they load, except
#                                       glibc's, the driver's (libcuda) and
#                                       cuBLAS/cuBLASLt/NCCL, which come from
#                                       PyTorch's pip wheels on that machine
#                                       (libcudart, small, is carried)
#   lib/llmt/libllmt_spm.so             the SentencePiece shim the CLI dlopens
#                                       (found as <exe dir>/../lib/llmt/)
#
# Carry .gpu-bundle/ to the GPU machine and run bench/gpu/run.sh there.
#
# Environment:
#   LLMT_BUILD_DIR     build dir (default build-gpu-bundle)
#   LLMT_BUNDLE_DIR    output (default .gpu-bundle)
#   GPU_TEST_TARGETS   test targets (default: cuda_matmul_test cuda_kernels_test comm_gpu_test
#                      cuda_model_test cuda_train_test; missing ones are skipped)
#   JOBS               build parallelism (default 2)
#   LLMT_BUNDLE_MAX_MIB  size limit (default 60)
#   LLMT_BUNDLE_XZ_MIB   files larger than this are stored as NAME.xz (default 2);
#                        bench/gpu/run.sh unpacks them in place
#
# The build uses -march=x86-64-v3 instead of -march=native: the GPU machine's
# CPU is not this one, and code for this CPU's extensions (AVX-512 here) can
# stop there with SIGILL.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BUILD=${LLMT_BUILD_DIR:-build-gpu-bundle}
BUNDLE=${LLMT_BUNDLE_DIR:-$ROOT/.gpu-bundle}
JOBS=${JOBS:-2}
MAX_MIB=${LLMT_BUNDLE_MAX_MIB:-60}
XZ_MIB=${LLMT_BUNDLE_XZ_MIB:-2}
GPU_TEST_TARGETS=${GPU_TEST_TARGETS:-cuda_matmul_test cuda_kernels_test cuda_model_test cuda_train_test comm_gpu_test}

echo "== configure $BUILD"
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLMT_CUDA=ON -DLLMT_BUILD_SERVICES=OFF \
  -DLLMT_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=x86-64-v3 >"$BUILD/gpu-bundle-configure.log" 2>&1 ||
  { cat "$BUILD/gpu-bundle-configure.log"; exit 1; }

# Targets the configured project defines (Makefile generator: "... name";
# Ninja: "name: phony" and the like).
AVAILABLE=$(cmake --build "$BUILD" --target help 2>/dev/null | sed -e 's/^\.\.\. //' -e 's/:.*//')
has_target() { grep -qx "$1" <<<"$AVAILABLE"; }

TARGETS=()
for t in bench_gpu_train bench_attention llmt llmt_spm; do
  if has_target "$t"; then
    TARGETS+=("$t")
  elif [[ $t == bench_gpu_train ]]; then
    echo "error: target bench_gpu_train is not defined (needs LLMT_HAVE_CUDA and llmt_model_cuda)" >&2
    exit 1
  else
    echo "warning: target $t is not defined; not bundled" >&2
  fi
done
TESTS=()
for t in $GPU_TEST_TARGETS; do
  if has_target "$t"; then
    TESTS+=("$t")
  else
    echo "note: test target $t is not defined; skipped"
  fi
done

echo "== build ${TARGETS[*]} ${TESTS[*]} (-j$JOBS)"
cmake --build "$BUILD" -j"$JOBS" --target "${TARGETS[@]}" "${TESTS[@]}"

# The first regular executable file named NAME under the build dir.
built() {
  find "$ROOT/$BUILD" "$BUILD" -maxdepth 6 -type f -name "$1" -perm -u+x 2>/dev/null | head -1
}

echo "== bundle $BUNDLE"
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin/tests" "$BUNDLE/lib/llmt"
OBJS=()
for t in bench_gpu_train bench_attention llmt; do
  [[ " ${TARGETS[*]} " == *" $t "* ]] || continue
  f=$(built "$t")
  [[ -n "$f" ]] || { echo "error: built $t not found under $BUILD" >&2; exit 1; }
  install -m 755 "$f" "$BUNDLE/bin/$t"
  OBJS+=("$BUNDLE/bin/$t")
done
for t in "${TESTS[@]}"; do
  f=$(built "$t")
  [[ -n "$f" ]] || { echo "error: built $t not found under $BUILD" >&2; exit 1; }
  install -m 755 "$f" "$BUNDLE/bin/tests/$t"
  OBJS+=("$BUNDLE/bin/tests/$t")
done
if [[ -f "$BUILD/lib/libllmt_spm.so" ]]; then
  install -m 755 "$BUILD/lib/libllmt_spm.so" "$BUNDLE/lib/llmt/libllmt_spm.so"
  OBJS+=("$BUNDLE/lib/llmt/libllmt_spm.so")
fi
strip --strip-unneeded "${OBJS[@]}"

# Everything the binaries load, by soname, except what the GPU machine must
# provide itself: glibc (must match its kernel and loader), the driver
# (libcuda), and cuBLAS/cuBLASLt/NCCL (PyTorch's wheels have them; libcublasLt
# alone is ~500 MB). libcudart is small and carried.
SKIP='^(linux-vdso|ld-linux[^ ]*|libc|libm|libpthread|libdl|librt|libresolv|libutil|libcuda|libcublas|libcublasLt|libnccl)\.so'
missing=0
declare -A SEEN
for o in "${OBJS[@]}"; do
  while read -r name path; do
    [[ -z "$name" || -n "${SEEN[$name]:-}" ]] && continue
    SEEN[$name]=1
    grep -Eq "$SKIP" <<<"$name" && continue
    if [[ "$path" == "not" || ! -f "$path" ]]; then
      echo "warning: $(basename "$o") needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    cp -L "$path" "$BUNDLE/lib/$name"
    chmod 644 "$BUNDLE/lib/$name"
  done < <(ldd "$o" | awk '/=>/ {print $1, $3}')  # the vdso and the loader have no "=>"
done

# The binaries carry their own copy of the CUDA kernels' device code and
# OpenBLAS is a 36 MB multi-architecture build; xz shrinks them 4-8x, which
# keeps the bundle well inside what a GPU machine is sent. run.sh unpacks them.
echo "== compress files over $XZ_MIB MiB"
while IFS= read -r -d '' f; do
  xz -T"$JOBS" -6 -f "$f"
done < <(find "$BUNDLE" -type f -size +"$((XZ_MIB * 1024))"k -print0)

echo "== contents"
(cd "$BUNDLE" && find . -type f -printf '%s\t%p\n' | sort -k2 |
  awk -F'\t' '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}')
bytes=$(du -sb "$BUNDLE" | cut -f1)
unpacked=$(find "$BUNDLE" -type f -name '*.xz' -exec xz --robot --list {} + |
  awk '$1 == "totals" {print $5}')
unpacked=$((bytes + ${unpacked:-0} - $(find "$BUNDLE" -type f -name '*.xz' -printf '%s\n' | awk '{s += $1} END {print s + 0}')))
echo "bundle: $BUNDLE, $(awk -v b="$bytes" 'BEGIN{printf "%.1f", b / 1048576}') MiB" \
  "($(awk -v b="$unpacked" 'BEGIN{printf "%.1f", b / 1048576}') MiB unpacked)"
if ((bytes > MAX_MIB * 1048576)); then
  echo "error: the bundle is larger than $MAX_MIB MiB" >&2
  exit 1
fi
((missing == 0)) || echo "warning: some libraries were not found here (see above)" >&2
echo "carry .gpu-bundle/ to the GPU machine and run bench/gpu/run.sh there"
