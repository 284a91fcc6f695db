#!/bin/sh
# A self-contained binary package of the C++ host, for a machine without the build's Debian packages
# (a container, a GPU server): `cmake --install` of BUILD_DIR plus private copies of the shared
# libraries it needs beyond the C and C++ runtimes (ICU, libcrypto, libjpeg, libexif, ...), each
# found through $ORIGIN, as auditwheel does for Python wheels.
#   usage: make-dist.sh BUILD_DIR OUT_DIR      writes OUT_DIR/restr_runtime-VERSION-linux-ARCH.tar.gz
set -eu
BUILD=$(cd "$1" && pwd)
mkdir -p "$2"
OUT=$(cd "$2" && pwd)
command -v patchelf > /dev/null || { echo "make-dist: patchelf is needed (apt-get install patchelf)" >&2; exit 1; }
VERSION=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt")
NAME=restr_runtime-${VERSION:?no project version in $BUILD/CMakeCache.txt}-linux-$(uname -m)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
ROOT="$STAGE/$NAME"
cmake --install "$BUILD" --prefix "$ROOT" > /dev/null
LIB="$ROOT/lib"
# the C library, the C++ runtime and the loader come from the machine it runs on
base='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s)\.so'
# ldd lists every library loaded, direct or not; the installed ones (ONNX Runtime) are already there
ldd "$ROOT/bin/restr-predict-cpp" "$LIB"/librestr_runtime.so.*.*.* | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r soname path; do
    echo "$soname" | grep -Eq "$base" && continue
    [ -e "$LIB/$soname" ] && continue
    case "$path" in "$ROOT"/*) continue ;; esac
    cp -L "$path" "$LIB/$soname"
    chmod u+w "$LIB/$soname"
    patchelf --set-rpath '$ORIGIN' "$LIB/$soname"  # its own dependencies: beside it
  done
cat > "$ROOT/README.txt" << EOF
restr_runtime $VERSION: the C++ host of the ReSTR runtime (runtime/cpp/README.md in the restr project).
bin/restr-predict-cpp, lib/librestr_runtime.so and .a, include/restr, lib/cmake and lib/pkgconfig.
lib/ also holds ONNX Runtime (libonnxruntime.so.1, from the onnxruntime wheel it was built with) and
the shared libraries it needs beyond glibc and libstdc++; they are found through \$ORIGIN.
Another ONNX Runtime build (onnxruntime-gpu's, for CUDA): link its library and provider libraries
over lib/libonnxruntime.so.1 and lib/libonnxruntime_providers_*.so; any release with the C API
version of the headers or newer works.
EOF
tar -C "$STAGE" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz"
