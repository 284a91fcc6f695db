#!/bin/sh
# The examples built against the *installed* package: `cmake --install` into a scratch prefix, then
# embed.cpp through find_package(restr_runtime) (shared) and embed.c through it (static) and through
# pkg-config (shared and static); each runs on the test export when one is given.
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
# consumer NAME VERSION LIBRARY SOURCE [CMAKE ARGS]: a project of its own, with
# cmake_minimum_required(VERSION VERSION), that builds SOURCE as NAME against
# restr_runtime::LIBRARY of the installed package (in $SCRATCH/NAME/build).
consumer() {
  name=$1 version=$2 library=$3 source=$4
  shift 4
  mkdir -p "$SCRATCH/$name"
  cat > "$SCRATCH/$name/CMakeLists.txt" << EOF
cmake_minimum_required(VERSION $version)
project($name LANGUAGES C CXX)
find_package(restr_runtime 0.1 REQUIRED)
add_executable($name "$source")
set_target_properties($name PROPERTIES CXX_STANDARD 17 LINKER_LANGUAGE CXX)
target_link_libraries($name PRIVATE restr_runtime::$library)
EOF
  { cmake -S "$SCRATCH/$name" -B "$SCRATCH/$name/build" -DCMAKE_PREFIX_PATH="$SCRATCH/prefix" "$@" && cmake --build "$SCRATCH/$name/build"; } \
    > "$SCRATCH/$name.log" 2>&1 || { echo "examples: the project $name failed:" >&2; cat "$SCRATCH/$name.log" >&2; exit 1; }
}
# A program on the shared library needs no ICU or OpenSSL development files (they are the static
# library's link interface only): find_package without them (as on a machine lacking libicu-dev and
# libssl-dev) still gives restr_runtime::restr_runtime.
consumer shared_only 3.25 restr_runtime "$EXAMPLES/embed.cpp" -DCMAKE_DISABLE_FIND_PACKAGE_ICU=TRUE -DCMAKE_DISABLE_FIND_PACKAGE_OpenSSL=TRUE
# A project written for CMake before 3.17 (policy CMP0099 OLD: the link options of a static library's
# private dependencies are not passed on) still gets the path to libonnxruntime.so.1 (the run below).
consumer old_cmake 3.10 restr_runtime_static "$EXAMPLES/embed.c"
# pkg-config: restr_runtime (shared) without the ICU and libcrypto .pc files (a machine without their
# development packages: only the install's own folder is searched), restr_runtime_static with them
mkdir -p "$SCRATCH/no_pc"
export PKG_CONFIG_PATH="$SCRATCH/prefix/lib/pkgconfig"
shared=$(PKG_CONFIG_LIBDIR="$SCRATCH/no_pc" pkg-config --cflags --libs restr_runtime) ||
  { echo "examples: pkg-config restr_runtime needs other .pc files than the install's" >&2; exit 1; }
static=$(pkg-config --cflags --libs restr_runtime_static) || { echo "examples: pkg-config restr_runtime_static failed" >&2; exit 1; }
# shellcheck disable=SC2086
cc -std=c99 -Wall -Werror -o "$SCRATCH/embed_c" "$EXAMPLES/embed.c" $shared
# shellcheck disable=SC2086
cc -std=c99 -Wall -Werror -o "$SCRATCH/embed_c_pc_static" "$EXAMPLES/embed.c" $static
# linked through the installed stub: no program asks for the symbol version of the wheel it was built beside
for exe in "$SCRATCH/build/embed_cpp" "$SCRATCH/build/embed_c_static" "$SCRATCH/embed_c" "$SCRATCH/embed_c_pc_static" "$SCRATCH/old_cmake/build/old_cmake"; do
  if nm -D --undefined-only "$exe" | grep -q 'OrtGetApiBase@'; then
    echo "examples: $exe is bound to one ONNX Runtime release: $(nm -D --undefined-only "$exe" | grep OrtGetApiBase)" >&2; exit 1
  fi
done
[ -n "$EXPORT" ] || { echo "examples: built (no export given: not run)"; exit 0; }
for exe in "$SCRATCH/build/embed_cpp" "$SCRATCH/build/embed_c_static" "$SCRATCH/embed_c" "$SCRATCH/embed_c_pc_static" \
           "$SCRATCH/shared_only/build/shared_only" "$SCRATCH/old_cmake/build/old_cmake"; do
  out=$("$exe" "$EXPORT")
  echo "$out" | grep -q "^the red car: area [0-9]*, score " || { echo "examples: $exe printed: $out" >&2; exit 1; }
done
echo "examples: ok"
