#!/usr/bin/env bash
# Installs Triton's perf_analyzer into DEST (default .deps/perf_analyzer)
# from package registries only, each file checked by its SHA-256:
#  - the binary from PyPI's tritonclient 2.50.0 manylinux wheel (its
#    data/bin/perf_analyzer; the perf-analyzer package on PyPI is an empty
#    placeholder);
#  - libb64.so.0d from Debian's libb64-0d (apt-get download + dpkg -x);
#  - libcudart.so.12, which the binary links even for CPU servers, from
#    PyPI's nvidia-cuda-runtime-cu12.
# Run it with DEST/run (sets LD_LIBRARY_PATH). Idempotent.
set -euo pipefail
DEST="${1:-.deps/perf_analyzer}"
STAMP="tritonclient-2.50.0+libb64-1.2-5+b1+cudart-12.4.127"
if [ -x "$DEST/perf_analyzer" ] && [ "$(cat "$DEST/.version" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/lib/deb.sh"
pipget() { # package==version sha256
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 --python-version 3.11 "$1" -d "$tmp"
  echo "$2  $(ls "$tmp"/"$3"*.whl)" | sha256sum --check --quiet
}
echo "fetch-perf-analyzer: downloading perf_analyzer (tritonclient 2.50.0) and its libraries"
pipget tritonclient==2.50.0 421fbb69ae6ab8cdb2c35b82134fcef2fe11e7af7718b1fcbc53335ab9bfe889 tritonclient-
pipget nvidia-cuda-runtime-cu12==12.4.127 64403288fa2136ee8e467cdc9c9427e0434110899d07c779f25b5c068934faa5 nvidia_cuda_runtime_cu12-
deb=$(deb_fetch libb64-0d 1.2-5+b1 b0e1d6fde8bdccc18c3884144aede064dc82464dd4777275fa80e74c05583e82 "$tmp")
rm -rf "$DEST"
mkdir -p "$DEST/lib" "$tmp/x"
python3 -m zipfile -e "$tmp"/tritonclient-*.whl "$tmp/x/tc"
python3 -m zipfile -e "$tmp"/nvidia_cuda_runtime_cu12-*.whl "$tmp/x/cu"
dpkg -x "$deb" "$tmp/x/b64"
cp "$tmp"/x/tc/tritonclient-*.data/data/bin/perf_analyzer "$DEST/perf_analyzer"
cp "$tmp"/x/cu/nvidia/cuda_runtime/lib/libcudart.so.12 "$tmp"/x/b64/usr/lib/x86_64-linux-gnu/libb64.so.0d "$DEST/lib/"
chmod +x "$DEST/perf_analyzer"
cat >"$DEST/run" <<'RUN'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer" "$@"
RUN
chmod +x "$DEST/run"
echo "$STAMP" >"$DEST/.version"
echo "fetch-perf-analyzer: installed perf_analyzer into $DEST"
