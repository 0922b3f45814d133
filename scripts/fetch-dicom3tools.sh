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
. "$(dirname "$0")/lib/deb.sh"
echo "fetch-dicom3tools: downloading dicom3tools $VERSION from Debian"
deb=$(deb_fetch dicom3tools "$VERSION" "$SHA256" "$tmp")
rm -rf "$DEST"
mkdir -p "$DEST"
dpkg -x "$deb" "$DEST"
echo "$VERSION" > "$DEST/.version"
echo "fetch-dicom3tools: installed $("$DEST/usr/bin/dciodvfy" -version 2>&1 | head -1) into $DEST"
