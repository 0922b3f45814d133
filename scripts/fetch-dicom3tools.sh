#!/usr/bin/env bash
# Installs dciodvfy and the rest of David Clunie's dicom3tools from Debian's
# package (main), verified by its SHA-256, into DEST (default
# .deps/dicom3tools) without root: apt-get download + dpkg -x. The test
# suite validates every SR and SEG voxserve writes with dciodvfy.
set -euo pipefail

DEST="${1:-.deps/dicom3tools}"
VERSION="1.00~20220618093127-2"
SHA256="8a6eb42a0ecbfc39905c0f7aac89114a4249cc8e67df526d1737640bf2dd71bf"

if [ -x "$DEST/usr/bin/dciodvfy" ] && [ "$(cat "$DEST/.version" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 777 "$tmp" # apt's sandbox user writes the download
echo "fetch-dicom3tools: downloading dicom3tools $VERSION from Debian"
fetch() { (cd "$tmp" && apt-get download -q "dicom3tools=$VERSION" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true); }
fetch
deb=$(ls "$tmp"/dicom3tools_*.deb 2>/dev/null | head -1)
if [ -z "$deb" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -q >/dev/null 2>&1 || true # a fresh machine may have empty package lists
  fetch
  deb=$(ls "$tmp"/dicom3tools_*.deb 2>/dev/null | head -1)
fi
if [ -z "$deb" ]; then
  echo "fetch-dicom3tools: apt-get download dicom3tools=$VERSION failed (is Debian's main component in the apt sources? run apt-get update)" >&2
  exit 1
fi
echo "$SHA256  $deb" | sha256sum --check --quiet
rm -rf "$DEST"
mkdir -p "$DEST"
dpkg -x "$deb" "$DEST"
echo "$VERSION" > "$DEST/.version"
echo "fetch-dicom3tools: installed $("$DEST/usr/bin/dciodvfy" -version 2>&1 | head -1) into $DEST"
