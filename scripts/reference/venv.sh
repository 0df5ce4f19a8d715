#!/usr/bin/env bash
# Creates, or reuses, the Python venv that parity tests and reference benches run in, and prints
# the path of its python. The venv lives outside the repository and is rebuilt only when
# requirements.txt changes. Set CHATFORGE_VENV to put it elsewhere.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req="$here/requirements.txt"
venv="${CHATFORGE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/chatforge/venv}"
mkdir -p "$(dirname "$venv")"
want=$(sha256sum "$req" | cut -d' ' -f1)
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "chatforge: building the Python reference venv in $venv" >&2
  python3 -m venv "$(readlink -f "$venv")" >&2
  # llama-cpp-python builds llama.cpp for this CPU; its multimodal (llava/mtmd) library is not needed.
  CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" \
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$venv/.requirements.sha256"
fi
# The Python package's build and test tools, added to the venv when they change.
pkg="$here/requirements-package.txt"
want_pkg=$(sha256sum "$pkg" | cut -d' ' -f1)
if [ "$(cat "$venv/.package-requirements.sha256" 2>/dev/null)" != "$want_pkg" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pkg" >&2
  echo "$want_pkg" > "$venv/.package-requirements.sha256"
fi
echo "$venv/bin/python"
