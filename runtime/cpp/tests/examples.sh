#!/bin/sh
# The examples built against the *installed* package: `cmake --install` into a scratch prefix, then
# embed.cpp through find_package(restr_runtime) (shared) and embed.c through it (static) and through
# pkg-config (shared); each runs on the test export when one is given.
#   examples.sh BUILD_DIR EXAMPLES_DIR SCRATCH [EXPORT_DIR [GOLDEN_DIR [ORT_LIBRARY]]]
set -eu
BUILD=$1 EXAMPLES=$2 SCRATCH=$3 EXPORT=${4:-} ORT=${6:-}
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
cmake --install "$BUILD" --prefix "$SCRATCH/prefix" > /dev/null
# ONNX Runtime loads its provider libraries (CUDA, TensorRT, through libonnxruntime_providers_shared.so)
# from the folder of the libonnxruntime.so.1 it was loaded as: they must be installed beside it
if [ -n "$ORT" ]; then
  for p in "$(dirname "$(readlink -f "$ORT")")"/libonnxruntime_providers_*.so; do
    [ -e "$p" ] || continue
    [ -e "$SCRATCH/prefix/lib/$(basename "$p")" ] || { echo "examples: $(basename "$p") is not installed beside libonnxruntime.so.1" >&2; exit 1; }
  done
fi
cmake -S "$EXAMPLES" -B "$SCRATCH/build" -DCMAKE_PREFIX_PATH="$SCRATCH/prefix" > /dev/null
cmake --build "$SCRATCH/build" -j2 > /dev/null
# A program on the shared library needs no ICU or OpenSSL development files (they are the static
# library's link interface only): find_package without them (as on a machine lacking libicu-dev and
# libssl-dev) still gives restr_runtime::restr_runtime.
mkdir -p "$SCRATCH/shared_only"
cat > "$SCRATCH/shared_only/CMakeLists.txt" << EOF
cmake_minimum_required(VERSION 3.25)
project(shared_only LANGUAGES CXX)
find_package(restr_runtime 0.1 REQUIRED)
add_executable(embed_shared_only "$EXAMPLES/embed.cpp")
target_compile_features(embed_shared_only PRIVATE cxx_std_17)
target_link_libraries(embed_shared_only PRIVATE restr_runtime::restr_runtime)
EOF
cmake -S "$SCRATCH/shared_only" -B "$SCRATCH/shared_only/build" -DCMAKE_PREFIX_PATH="$SCRATCH/prefix" \
  -DCMAKE_DISABLE_FIND_PACKAGE_ICU=TRUE -DCMAKE_DISABLE_FIND_PACKAGE_OpenSSL=TRUE > "$SCRATCH/shared_only.log" 2>&1 ||
  { echo "examples: find_package(restr_runtime) without ICU/OpenSSL development files failed:" >&2; cat "$SCRATCH/shared_only.log" >&2; exit 1; }
cmake --build "$SCRATCH/shared_only/build" > /dev/null
export PKG_CONFIG_PATH="$SCRATCH/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Werror -o "$SCRATCH/embed_c" "$EXAMPLES/embed.c" $(pkg-config --cflags --libs restr_runtime)
# linked through the installed stub: no program asks for the symbol version of the wheel it was built beside
for exe in "$SCRATCH/build/embed_cpp" "$SCRATCH/build/embed_c_static" "$SCRATCH/embed_c"; do
  if nm -D --undefined-only "$exe" | grep -q 'OrtGetApiBase@'; then
    echo "examples: $exe is bound to one ONNX Runtime release: $(nm -D --undefined-only "$exe" | grep OrtGetApiBase)" >&2; exit 1
  fi
done
[ -n "$EXPORT" ] || { echo "examples: built (no export given: not run)"; exit 0; }
for exe in "$SCRATCH/build/embed_cpp" "$SCRATCH/build/embed_c_static" "$SCRATCH/embed_c" "$SCRATCH/shared_only/build/embed_shared_only"; do
  out=$("$exe" "$EXPORT")
  echo "$out" | grep -q "^the red car: area [0-9]*, score " || { echo "examples: $exe printed: $out" >&2; exit 1; }
done
echo "examples: ok"
