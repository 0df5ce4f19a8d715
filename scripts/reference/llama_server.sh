#!/usr/bin/env bash
# Builds, or reuses, llama.cpp's own `llama-server` for `chatforge bench serve`, and prints its path.
# The sources are those the pinned llama-cpp-python sdist vendors (the same llama.cpp the parity
# tests run); cmake comes from the package registry. About 10 minutes on two cores, then cached
# in the reference venv.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=$("$here/venv.sh")
venv=$(dirname "$(dirname "$python")")
version=$(sed -n 's/^llama-cpp-python==//p' "$here/requirements.txt")
out="$venv/llama-server-$version"
if [ -x "$out/bin/llama-server" ]; then
  echo "$out/bin/llama-server"
  exit 0
fi
exec 9>"$venv.llama-server.lock"
flock 9
if [ ! -x "$out/bin/llama-server" ]; then
  echo "chatforge: building llama-server $version (llama.cpp from the llama-cpp-python sdist) in $out" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check cmake==4.4.5 >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    -d "$work" "llama-cpp-python==$version" >&2
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  "$venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
  "$venv/bin/cmake" --build "$work/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$out.tmp/bin"
  cp "$work/build/bin/llama-server" "$out.tmp/bin/"
  rm -rf "$out"
  mv "$out.tmp" "$out"
fi
echo "$out/bin/llama-server"
