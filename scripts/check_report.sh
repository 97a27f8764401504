#!/usr/bin/env bash
# Render an rfprobe HTML report in headless Chromium (Debian's `chromium` package), screenshot it and check
# that the screenshot is not blank (enough non-white pixels and colours).
#   bash scripts/check_report.sh REPORT.html [SHOT.png]      (PYTHON: an interpreter with matplotlib)
set -euo pipefail
report=$(realpath "$1")
shot=${2:-${report%.html}.png}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "no chromium binary (Debian: apt-get install chromium)" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size=1280,2400 --screenshot="$shot" "file://$report" >/dev/null 2>&1
"${PYTHON:-python3}" - "$shot" <<'PY'
import sys
import matplotlib.image as mpimg
import numpy as np
pixels = mpimg.imread(sys.argv[1])[..., :3]
ink = float((pixels.min(axis=-1) < 0.9).mean())
colours = len(np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0))
print(f"{sys.argv[1]}: {pixels.shape[1]}x{pixels.shape[0]}, {100 * ink:.1f}% non-white pixels, {colours} colours")
if ink < 0.02 or colours < 50:
    sys.exit("the screenshot is blank")
print("not blank")
PY
