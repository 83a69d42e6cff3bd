#!/usr/bin/env bash
# Download and unpack MS-COCO train2017 (~18 GB zip, 118k photos) for style-transfer training.
# Usage: scripts/download_coco.sh [DEST]      (default: data/coco; needs internet, curl or wget, unzip)
# Then:  style-transfer train --content-dir DEST/train2017 --style-image wave.jpg --log-dir runs/wave
# Re-running resumes a partial download and skips the unpacking when train2017/ is complete.
set -euo pipefail
DEST="${1:-data/coco}"
URL="http://images.cocodataset.org/zips/train2017.zip"
EXPECTED=118287
mkdir -p "$DEST"
cd "$DEST"
if [ -d train2017 ] && [ "$(find train2017 -name '*.jpg' | wc -l)" -ge "$EXPECTED" ]; then
  echo "train2017/ already complete in $(pwd)"; exit 0
fi
command -v unzip >/dev/null || { echo "unzip is needed (e.g. apt-get install unzip)" >&2; exit 1; }
echo "==> downloading $URL into $(pwd) (about 18 GB; resumable)"
if command -v curl >/dev/null; then
  curl -fL -C - -o train2017.zip "$URL"
elif command -v wget >/dev/null; then
  wget -c -O train2017.zip "$URL"
else
  echo "curl or wget is needed" >&2; exit 1
fi
echo "==> checking the archive"
unzip -tq train2017.zip
echo "==> unpacking"
unzip -q -o train2017.zip
n="$(find train2017 -name '*.jpg' | wc -l)"
echo "==> $n photos in $(pwd)/train2017 (expected $EXPECTED)"
[ "$n" -ge "$EXPECTED" ] || { echo "fewer photos than expected; re-run to resume" >&2; exit 1; }
echo "You may delete $(pwd)/train2017.zip now."
