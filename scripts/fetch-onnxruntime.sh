#!/usr/bin/env bash
# Installs ONNX Runtime's shared library from the onnxruntime-node npm package
# (the only registry-served build of the C library), verified by sha256.
# Idempotent: does nothing when the library is already there with the right hash.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.30.0}"
# sha256 of onnxruntime-node-${ORT_VERSION}.tgz and of the library inside it.
TGZ_SHA256="6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75"
LIB_SHA256="ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23"
DEST="${1:-.deps/onnxruntime}"
LIB="$DEST/libonnxruntime.so.1"

if [ -f "$LIB" ] && echo "$LIB_SHA256  $LIB" | sha256sum -c --status; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-onnxruntime: npm is required (apt-get install npm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-onnxruntime: downloading onnxruntime-node@$ORT_VERSION from the npm registry"
# npm pack fetches the tarball only: no install scripts run (they would download from elsewhere).
(cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null 2>&1)
tgz="$tmp/onnxruntime-node-$ORT_VERSION.tgz"
echo "$TGZ_SHA256  $tgz" | sha256sum -c --status || { echo "fetch-onnxruntime: checksum mismatch for $tgz" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
mkdir -p "$DEST"
install -m 0644 "$tmp/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$LIB.tmp"
echo "$LIB_SHA256  $LIB.tmp" | sha256sum -c --status || { echo "fetch-onnxruntime: checksum mismatch for the library" >&2; exit 1; }
mv "$LIB.tmp" "$LIB"
ln -sf libonnxruntime.so.1 "$DEST/libonnxruntime.so"
echo "$ORT_VERSION" > "$DEST/VERSION"
echo "fetch-onnxruntime: installed $LIB (ONNX Runtime $ORT_VERSION)"
