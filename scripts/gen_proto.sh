#!/usr/bin/env bash
# Regenerate the containerd gRPC bindings (protobuf messages, .pyi stubs and
# grpclib stubs) from our trimmed .proto subset in actors/containerd/proto/.
# The protos import each other by their repo-relative path and we compile with
# the repo root as include path, so the generated imports already read
# `from actors.containerd.proto import x_pb2`: no post-processing needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PROTOC_PYTHON:-.venv/bin/python}"  # not $PYTHON: the Makefile uses that for python3
BIN="$(dirname "$PY")"
OUT=actors/containerd/proto
rm -f "$OUT"/*_pb2.py "$OUT"/*_pb2.pyi "$OUT"/*_grpc.py
"$PY" -m grpc_tools.protoc -I . \
    --plugin=protoc-gen-grpclib_python="$BIN/protoc-gen-grpclib_python" \
    --python_out=. --pyi_out=. --grpclib_python_out=. \
    "$OUT"/*.proto
# Message-only protos get an empty grpclib module; drop it.
for f in "$OUT"/*_grpc.py; do grep -q "class .*Stub" "$f" || rm "$f"; done
# mypy follows imports into generated code despite pyproject's exclude; the
# stubs subclass protobuf's untyped Message, so silence them file by file.
sed -i '1i # mypy: ignore-errors' "$OUT"/*_pb2.pyi "$OUT"/*_grpc.py
touch "$OUT/__init__.py"
