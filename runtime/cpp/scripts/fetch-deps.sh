#!/bin/sh
# ONNX Runtime for the C++ host, without touching the system's apt state or Python packages:
# headers from Debian trixie's libonnxruntime-dev (the C API is versioned: 1.21 headers work with a
# newer library), the library from the onnxruntime wheel the Python runtime uses (linked through a
# symlink, so both hosts run the very same ONNX Runtime).
#   usage: fetch-deps.sh DEPS_DIR [PYTHON]      idempotent: does nothing when DEPS_DIR is complete
set -eu
D=$(mkdir -p "$1" && cd "$1" && pwd)
PY=${2:-python3}
HDR="$D/root/usr/include/onnxruntime/onnxruntime_c_api.h"
if [ ! -f "$HDR" ]; then
  mkdir -p "$D/apt/lists/partial" "$D/apt/archives/partial" "$D/root"
  echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main' > "$D/apt/sources.list"
  APT="-o Dir::Etc::sourcelist=$D/apt/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::lists=$D/apt/lists -o Dir::Cache::archives=$D/apt/archives -o Debug::NoLocking=1"
  # shellcheck disable=SC2086
  apt-get $APT update -qq
  # shellcheck disable=SC2086
  (cd "$D/apt" && apt-get $APT download libonnxruntime-dev)
  dpkg -x "$D"/apt/libonnxruntime-dev_*.deb "$D/root"
  [ -f "$HDR" ] || { echo "fetch-deps: $HDR missing after unpacking libonnxruntime-dev" >&2; exit 1; }
fi
LIBDIR=$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))') || {
  echo "fetch-deps: $PY cannot import onnxruntime (pip install onnxruntime, or restr's 'cpu' extra)" >&2; exit 1; }
LIB=$(ls "$LIBDIR"/libonnxruntime.so.* 2>/dev/null | head -n 1)
[ -n "$LIB" ] || { echo "fetch-deps: no libonnxruntime.so.* in $LIBDIR" >&2; exit 1; }
mkdir -p "$D/lib"
ln -sf "$LIB" "$D/lib/libonnxruntime.so"
ln -sf "$LIB" "$D/lib/$(basename "$LIB" | sed 's/\(\.so\.[0-9]*\).*/\1/')"
# the execution-provider libraries (CUDA, TensorRT and the shared bridge): ONNX Runtime looks for them
# beside the libonnxruntime.so.1 it was loaded as, which is this link
for p in "$LIBDIR"/libonnxruntime_providers_*.so; do
  if [ -e "$p" ]; then ln -sf "$p" "$D/lib/$(basename "$p")"; fi
done
echo "$D/root/usr/include/onnxruntime"
