#!/usr/bin/env bash
# Fetches the real ONNX models basalt-infer's tests and benchmark run, and a
# Python environment with onnxruntime that computes the reference outputs.
# Only package registries are used: the models come inside a crates.io crate
# and a PyPI wheel. Safe to run any number of times; each model's SHA-256 is
# checked.
#
#   scripts/fetch-models.sh          # into ${BASALT_CACHE_DIR:-/var/cache/basalt/cache}
#
# Writes:
#   $BASALT_CACHE_DIR/models/magika.onnx      file-type classifier (crates.io magika 1.1.0)
#   $BASALT_CACHE_DIR/models/ppocr-cls.onnx   PP-OCR text-direction classifier (PyPI rapidocr-onnxruntime 1.4.4)
#   $BASALT_CACHE_DIR/models/ppocr-rec.onnx   PP-OCRv4 text recogniser (same wheel)
#   $BASALT_CACHE_DIR/pyenv/                  venv with the pinned onnxruntime and numpy
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

cache=${BASALT_CACHE_DIR:-/var/cache/basalt/cache}
models=$cache/models
pyenv=$cache/pyenv
python=${BASALT_PYTHON:-python3}

onnxruntime_version=1.31.1
numpy_version=2.4.6

magika_url=https://static.crates.io/crates/magika/magika-1.1.0.crate
magika_member=magika-1.1.0/src/model.onnx
rapidocr_wheel=rapidocr-onnxruntime==1.4.4

# name  SHA-256 of the .onnx
sums="\
fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c  magika.onnx
e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c  ppocr-cls.onnx
48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b  ppocr-rec.onnx"

want_sum() { printf '%s\n' "$sums" | awk -v f="$1" '$2 == f { print $1 }'; }
have() { [ -f "$models/$1" ] && [ "$(sha256sum "$models/$1" | cut -d' ' -f1)" = "$(want_sum "$1")" ]; }

# Moves $1 to $models/$2 once its SHA-256 is the recorded one.
install_model() {
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$(want_sum "$2")" ]; then
        echo "scripts/fetch-models.sh: $2 has SHA-256 $got, expected $(want_sum "$2")" >&2
        exit 1
    fi
    mv "$1" "$models/$2"
}

mkdir -p "$models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The venv first: its pip fetches the wheel below.
if ! "$pyenv/bin/python" -c "
import sys, numpy, onnxruntime
sys.exit(onnxruntime.__version__ != '$onnxruntime_version' or numpy.__version__ != '$numpy_version')
" 2>/dev/null; then
    log "creating $pyenv (onnxruntime $onnxruntime_version, numpy $numpy_version)"
    rm -rf "$pyenv"
    if ! "$python" -m venv "$pyenv"; then
        echo "scripts/fetch-models.sh: '$python -m venv' failed; on Debian install python3-venv (scripts/setup.sh does)" >&2
        exit 1
    fi
    "$pyenv/bin/pip" install --quiet --disable-pip-version-check \
        "onnxruntime==$onnxruntime_version" "numpy==$numpy_version"
fi

if ! have magika.onnx; then
    log "fetching magika.onnx from $magika_url"
    curl -sSfL --retry 3 -o "$tmp/magika.crate" "$magika_url"
    tar -xzf "$tmp/magika.crate" -C "$tmp" "$magika_member"
    install_model "$tmp/$magika_member" magika.onnx
fi

if ! have ppocr-cls.onnx || ! have ppocr-rec.onnx; then
    log "fetching PP-OCR models from PyPI $rapidocr_wheel"
    "$pyenv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$tmp" "$rapidocr_wheel"
    "$pyenv/bin/python" - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
wheel = glob.glob(f"{tmp}/rapidocr_onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    for member, name in [
        ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr-cls.onnx"),
        ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ppocr-rec.onnx"),
    ]:
        with z.open(member) as src, open(f"{tmp}/{name}", "wb") as dst:
            dst.write(src.read())
PY
    install_model "$tmp/ppocr-cls.onnx" ppocr-cls.onnx
    install_model "$tmp/ppocr-rec.onnx" ppocr-rec.onnx
fi

log "models in $models, onnxruntime in $pyenv"
