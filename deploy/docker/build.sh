#!/usr/bin/env bash
# The build steps of the llmt container images, as a script that runs the same
# inside a Dockerfile's build stage and on a developer machine or CI (where it
# is tested: tests/integration/deploy).
#
#   deploy/docker/build.sh --component coordinator|worker --prefix DIR
#                          [--build-dir DIR] [--cuda AUTO|ON|OFF] [--jobs N]
#                          [--configure-only | --no-build]
#
# 1. configures a Release build (unless --build-dir already holds one: then
#    its configuration is kept) with services on, tests off and no
#    -march=native (an image runs on other machines than the one that built
#    it; LLMT_CXX_ARCH, default x86-64-v3 = AVX2+FMA, sets the ISA instead);
# 2. builds only the component's targets;
# 3. installs them into DIR: bin/ (binaries), lib/llmt/ (the SentencePiece
#    shim the tokenizer dlopen()s from <bin>/../lib/llmt);
# 4. finds the Debian/Ubuntu packages that own every shared library the
#    binaries load and writes them, one per line, to
#    DIR/share/llmt/runtime-packages.txt: the runtime stage installs exactly
#    those. Libraries outside the package database (the CUDA base image's)
#    are listed in DIR/share/llmt/unpackaged-libs.txt;
# 5. checks that every library resolves and every binary starts (--help).
# --configure-only stops after step 1; --no-build skips step 2 and installs
# what an up-to-date --build-dir already holds (CI's tests do both, so they
# never rebuild binaries other tests are running).
set -euo pipefail

component="" prefix="" build_dir="" cuda="" jobs="$(nproc)" configure_only=0 no_build=0
src="$(cd "$(dirname "$0")/../.." && pwd)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --component) component="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --configure-only) configure_only=1; shift ;;
    --no-build) no_build=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build.sh: $*" >&2; exit 1; }
[[ -n "$component" && -n "$prefix" ]] || die "--component and --prefix are required (see --help)"
build_dir="${build_dir:-$src/build-image-$component}"

# Targets, and where the build puts them (relative to the build directory).
case "$component" in
  coordinator)
    targets=(llmt-coordinator)
    bins=(coordinator/llmt-coordinator)
    libs=()
    cuda="${cuda:-OFF}" ;;
  worker)
    # llmt-worker runs each rank as `llmt train` (found next to itself).
    targets=(llmt-worker llmt llmt_spm)
    bins=(worker/daemon/llmt-worker cli/llmt)
    libs=(lib/libllmt_spm.so)
    cuda="${cuda:-AUTO}" ;;
  *) die "unknown component '$component' (coordinator or worker)" ;;
esac

# 1. Configure.
if [[ -f "$build_dir/CMakeCache.txt" ]]; then
  echo "build.sh: reusing the configured build in $build_dir"
  grep -q '^LLMT_BUILD_SERVICES:BOOL=ON' "$build_dir/CMakeCache.txt" ||
    die "$build_dir is configured with LLMT_BUILD_SERVICES=OFF; the daemons need ON"
else
  arch="${LLMT_CXX_ARCH:-x86-64-v3}"
  cmake -S "$src" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DLLMT_BUILD_SERVICES=ON \
    -DLLMT_BUILD_TESTS=OFF -DLLMT_NATIVE=OFF -DLLMT_CUDA="$cuda" \
    -DCMAKE_CXX_FLAGS="-march=$arch" >/dev/null
fi

if [[ $configure_only -eq 1 ]]; then
  echo "build.sh: configured $build_dir"
  exit 0
fi

# 2. Build.
if [[ $no_build -eq 0 ]]; then
  cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}"
fi

# 3. Install.
mkdir -p "$prefix/bin" "$prefix/lib/llmt" "$prefix/share/llmt"
installed=()
for b in "${bins[@]}"; do
  [[ -x "$build_dir/$b" ]] || die "the build did not produce $build_dir/$b"
  install -m 0755 "$build_dir/$b" "$prefix/bin/"
  installed+=("$prefix/bin/$(basename "$b")")
done
for l in "${libs[@]}"; do
  [[ -f "$build_dir/$l" ]] || die "the build did not produce $build_dir/$l"
  install -m 0644 "$build_dir/$l" "$prefix/lib/llmt/"
  installed+=("$prefix/lib/llmt/$(basename "$l")")
done
strip --strip-unneeded "${installed[@]}" 2>/dev/null || true

# 4. Runtime packages: the owner of each shared library (through symlinks and
# the /lib -> /usr/lib merge, which dpkg may record either way), looked up in
# dpkg's file lists in one pass (dpkg-query -S per library is slow).
declare -A libs_seen=()
missing=""
for f in "${installed[@]}"; do
  while read -r line; do
    if [[ "$line" == *"not found"* ]]; then
      missing+="  $f: $line"$'\n'
      continue
    fi
    lib="$(awk '/=>/ {print $3}' <<<"$line")"
    [[ -n "$lib" && -e "$lib" ]] && libs_seen["$lib"]=1
  done < <(ldd "$f")
done
variants() {
  local p="$1" real
  real="$(readlink -f "$p")"
  printf '%s\n' "$p" "$real" "${p#/usr}" "/usr$p" "${real#/usr}" "/usr$real"
}
declare -A owner_of=()  # path variant -> packages
patterns="$(for lib in "${!libs_seen[@]}"; do variants "$lib"; done | sort -u)"
if [[ -n "$patterns" ]]; then
  while IFS= read -r hit; do
    list="${hit%%:/*}"  # /var/lib/dpkg/info/NAME[:ARCH].list:/path
    path="/${hit#*:/}"
    pkg="$(basename "$list" .list)"
    owner_of["$path"]+=" ${pkg%%:*}"
  done < <(grep -HFx -f <(printf '%s\n' "$patterns") /var/lib/dpkg/info/*.list 2>/dev/null || true)
fi
packages=() unpackaged=()
for lib in "${!libs_seen[@]}"; do
  found=""
  while read -r v; do found+="${owner_of[$v]:-}"; done < <(variants "$lib")
  if [[ -n "$found" ]]; then
    for p in $found; do packages+=("$p"); done
  else
    unpackaged+=("$lib")
  fi
done
[[ -z "$missing" ]] || die "unresolved shared libraries:"$'\n'"$missing"
printf '%s\n' "${packages[@]}" | sort -u >"$prefix/share/llmt/runtime-packages.txt"
printf '%s\n' "${unpackaged[@]}" | sed '/^$/d' | sort -u >"$prefix/share/llmt/unpackaged-libs.txt"
# Our own build output must never be loaded from outside the prefix.
if grep -F "$build_dir" "$prefix/share/llmt/unpackaged-libs.txt"; then
  die "the binaries load libraries from the build tree (listed above)"
fi

# 5. Smoke test: each binary starts (absl's --help exits 1 after printing).
for b in "${bins[@]}"; do
  exe="$prefix/bin/$(basename "$b")"
  out="$("$exe" --help 2>&1)" || true
  grep -qi "usage\|flags" <<<"$out" || die "$exe --help printed no usage:"$'\n'"$out"
done
echo "build.sh: $component installed into $prefix ($(wc -l <"$prefix/share/llmt/runtime-packages.txt") runtime packages)"
